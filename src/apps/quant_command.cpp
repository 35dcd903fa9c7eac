// `squat quant`: quantize a dumped key (or value) array offline with KIVI or SQuat and report
// bits per element, MSE and (with queries) the relative logit error ‖Q(K̂−K)ᵀ‖_F / ‖QKᵀ‖_F.
// With --from-model it runs a model over one prompt instead (quant_from_model.cpp).
#include <fmt/format.h>

#include <cmath>
#include <string>

#include "apps/commands.h"
#include "apps/quant_from_model.h"
#include "core/error.h"
#include "core/npy.h"
#include "squat/kv_quant.h"
#include "squat/kvcache.h"

namespace squat::apps {
namespace {

// The group size, SQuat block, subspace, lambda and key layout come from the shared cache
// flags (model_options.h), so `quant` and `quant --from-model` spell them as `run` does.
struct QuantOptions {
  std::string keys, queries, out;
  std::string method = "squat";
  int bits = 2;
  std::string tensor = "keys";
  bool from_model = false;
  FromModelOptions fm;
};

// Flags of a model run, meaningless for a dumped array.
constexpr const char* kModelOnlyFlags[] = {
    "--model",        "--prompt",      "--file",         "--dump-dir",      "--layers",
    "--json",         "--threads",     "--context",      "--batch",         "--kv",
    "--k-bits",       "--v-bits",      "--residual-length", "--key-rope",   "--query-rope",
    "--power-method", "--hadamard",    "--save-subspace", "--load-subspace"};
constexpr const char* kArrayOnlyFlags[] = {"--keys", "--queries", "--out", "--method", "--bits",
                                           "--tensor"};

npy::Array read_matrix(const std::string& path, const char* what) {
  npy::Array a = npy::read(path);
  if (a.shape.size() != 2 || a.shape[0] == 0 || a.shape[1] == 0) {
    std::string dims;
    for (std::size_t i = 0; i < a.shape.size(); ++i)
      dims += (i ? ", " : "") + std::to_string(a.shape[i]);
    fail("{}: {} must be a non-empty 2-D array [rows, head_dim], got shape ({})", path, what, dims);
  }
  for (std::size_t i = 0; i < a.data.size(); ++i) {
    if (!std::isfinite(a.data[i])) {
      fail("{}: {} contain a non-finite value ({}) at row {}, column {}", path, what, a.data[i],
           i / a.shape[1], i % a.shape[1]);
    }
  }
  return a;
}

void run_quant(const QuantOptions& opts, const CLI::App& cmd) {
  if (opts.from_model) {
    for (const char* flag : kArrayOnlyFlags) {
      if (cmd.count(flag) > 0) fail_usage("{} does not apply with --from-model", flag);
    }
    if (opts.fm.model.model_path.empty()) fail_usage("--from-model needs -m/--model MODEL.gguf");
    run_quant_from_model(opts.fm);
    return;
  }
  for (const char* flag : kModelOnlyFlags) {
    if (cmd.count(flag) > 0) fail_usage("{} applies only with --from-model", flag);
  }
  if (opts.keys.empty()) fail_usage("give --keys K.npy (or --from-model -m MODEL)");
  if (opts.out.empty()) fail_usage("give --out FILE.npy for the dequantized array");
  struct {
    std::string keys, queries, out, method;
    int bits;
    std::string tensor;
    int group_size, quant_group_size, subspace_dim;
    double lambda;
    std::string key_quant;
  } o{opts.keys,
      opts.queries,
      opts.out,
      opts.method,
      opts.bits,
      opts.tensor,
      opts.fm.model.group_size,
      opts.fm.model.quant_group_size,
      opts.fm.model.subspace_dim,
      opts.fm.model.lambda,
      opts.fm.model.key_quant};
  const bool values = o.tensor == "values";
  const bool squat = o.method == "squat" && !values;
  const kv::GroupLayout layout = (values || o.key_quant == "per-token")
                                     ? kv::GroupLayout::PerToken
                                     : kv::GroupLayout::PerChannel;
  if (o.group_size <= 0) fail_usage("--group-size must be positive, got {}", o.group_size);
  if (squat && o.quant_group_size < 0) {
    fail_usage("--quant-group-size must be positive, got {}", o.quant_group_size);
  }
  if (o.subspace_dim < 0) fail_usage("--subspace-dim must be >= 0, got {}", o.subspace_dim);
  if (!(o.lambda >= 0) || !std::isfinite(o.lambda)) {
    fail_usage("--lambda must be finite and >= 0, got {}", o.lambda);
  }
  if (squat && o.queries.empty()) fail_usage("--method squat needs --queries Q.npy");

  const npy::Array k = read_matrix(o.keys, values ? "values" : "keys");
  const std::size_t n = k.shape[0], d = k.shape[1];
  // 0: the engine's automatic block (kv::default_quant_group_size says why).
  if (o.quant_group_size == 0) {
    o.quant_group_size = kv::default_quant_group_size(int(d), layout, o.group_size);
  }
  npy::Array q;
  if (!o.queries.empty()) {
    q = read_matrix(o.queries, "queries");
    if (q.shape[1] != d) {
      fail("{}: queries have head_dim {}, keys have {}", o.queries, q.shape[1], d);
    }
  }
  if (squat && d % std::size_t(o.quant_group_size) != 0) {
    fail_usage("head_dim {} of {} is not a multiple of --quant-group-size {}", d, o.keys,
               o.quant_group_size);
  }
  if (layout == kv::GroupLayout::PerChannel && n % std::size_t(o.group_size) != 0) {
    fail_usage("{} has {} tokens: per-channel quantization needs a multiple of --group-size {}",
               o.keys, n, o.group_size);
  }
  if (layout == kv::GroupLayout::PerToken && d % std::size_t(o.group_size) != 0) {
    fail_usage("head_dim {} of {} is not a multiple of --group-size {} (per-token groups)", d,
               o.keys, o.group_size);
  }
  if (squat && layout == kv::GroupLayout::PerToken && o.quant_group_size % o.group_size != 0) {
    fail_usage("per-token SQuat needs --quant-group-size {} to be a multiple of --group-size {}",
               o.quant_group_size, o.group_size);
  }

  kv::QuantizedChunk chunk;
  if (squat) {
    kv::SubspaceOptions so;
    so.subspace_dim = o.subspace_dim;
    so.lambda = o.lambda;
    so.quant_group_size = o.quant_group_size;
    const kv::SquatState state =
        kv::SquatState::from_queries(q.data.data(), q.shape[0], int(d), so);
    chunk = kv::squat_quantize_chunk(k.data.data(), n, d, o.bits, o.group_size, layout,
                                     kv::ParamType::F16, state);
  } else {
    chunk =
        kv::quantize_chunk(k.data.data(), n, d, o.bits, o.group_size, layout, kv::ParamType::F16);
  }
  std::vector<float> khat(n * d);
  kv::dequantize_chunk(chunk, khat.data());

  const KeyError err = key_error(k.data.data(), khat.data(), n, d,
                                 o.queries.empty() ? nullptr : q.data.data(),
                                 o.queries.empty() ? 0 : q.shape[0]);
  npy::write_f32(o.out, khat.data(), {n, d});

  const double bpe = double(chunk.storage_bytes()) * 8.0 / double(n * d);
  fmt::print("method: {}  tensor: {}  bits: {}  layout: {}  group-size: {}",
             squat ? "squat" : "kivi", values ? "values" : "keys", o.bits,
             layout == kv::GroupLayout::PerChannel ? "per-channel" : "per-token", o.group_size);
  if (squat) {
    fmt::print("  quant-group-size: {}  subspace-dim: {}  lambda: {}", o.quant_group_size,
               o.subspace_dim, o.lambda);
  }
  fmt::print("\nshape: [{}, {}]\n", n, d);
  fmt::print("bits per element: {:.4f} (codes {} + fp16 scale and min per group of {})\n", bpe,
             o.bits, o.group_size);
  fmt::print("{} mse: {:.6e}\n", values ? "value" : "key", err.mse);
  if (!o.queries.empty()) fmt::print("relative logit error: {:.6e}\n", err.logit);
  fmt::print("wrote {}\n", o.out);
}

}  // namespace

void register_quant_command(CLI::App& app) {
  auto opts = std::make_shared<QuantOptions>();
  auto* cmd = app.add_subcommand(
      "quant",
      "Quantize a dumped key/value array (.npy [tokens, head_dim]) with KIVI or SQuat, or with "
      "--from-model report per layer how KIVI and SQuat keys move a model's attention logits");
  cmd->add_option("--keys", opts->keys, "Keys (or values) .npy, float32/float16 [tokens, head_dim]");
  cmd->add_option("--queries", opts->queries,
                  "Queries .npy [rows, head_dim] (SQuat subspace, logit error)");
  cmd->add_option("--method", opts->method, "kivi or squat")
      ->check(CLI::IsMember({"kivi", "squat"}))
      ->capture_default_str();
  cmd->add_option("--bits", opts->bits, "Bits per code: 2, 4 or 8")
      ->check(CLI::IsMember({2, 4, 8}))
      ->capture_default_str();
  cmd->add_option("--tensor", opts->tensor, "keys or values (values: per-token KIVI)")
      ->check(CLI::IsMember({"keys", "values"}))
      ->capture_default_str();
  cmd->add_option("--out", opts->out, "Output .npy (float32, dequantized)");

  cmd->add_flag("--from-model", opts->from_model,
                "Run -m MODEL over one prompt (-p/-f) and report, per layer, KIVI's and SQuat's "
                "logit error and key MSE at --k-bits (cache flags as for `run`)");
  cmd->add_option("-p,--prompt", opts->fm.prompt, "--from-model: prompt text");
  cmd->add_option("-f,--file", opts->fm.prompt_file, "--from-model: read the prompt from a file");
  cmd->add_option("--dump-dir", opts->fm.dump_dir,
                  "--from-model: write layer_L_head_H_keys.npy / _queries.npy into this "
                  "existing directory");
  cmd->add_option("--layers", opts->fm.layers, "--from-model: layers to analyse (default all)")
      ->delimiter(',');
  cmd->add_option("--json", opts->fm.json, "--from-model: write the per-layer numbers as JSON");
  // The cache flags shared with run/bench (group size, SQuat block, subspace, lambda, ...).
  add_model_options(*cmd, opts->fm.model);
  cmd->get_option("--model")->required(false);
  cmd->callback([opts, cmd] { run_quant(*opts, *cmd); });
}

}  // namespace squat::apps
