// Placeholder until the engine lands: the model work replaces this file.
#include "apps/commands.h"
#include "core/error.h"

namespace squat::apps {
void register_run_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "Generate text with a GGUF model");
  cmd->callback([] { fail("squat run is not available in this build yet"); });
}
}  // namespace squat::apps
