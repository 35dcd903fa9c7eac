// Placeholder until the quantization library lands: the kvcache work replaces this file.
#include "apps/commands.h"
#include "core/error.h"

namespace squat::apps {
void register_quant_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("quant", "Quantize dumped K/Q tensors (.npy) offline");
  cmd->callback([] { fail("squat quant is not available in this build yet"); });
}
}  // namespace squat::apps
