// `squat quant`: quantize a dumped key (or value) array offline with KIVI or SQuat and report
// bits per element, MSE and (with queries) the relative logit error ‖Q(K̂−K)ᵀ‖_F / ‖QKᵀ‖_F.
#include <fmt/format.h>

#include <cmath>
#include <string>

#include "apps/commands.h"
#include "core/error.h"
#include "core/npy.h"
#include "squat/kv_quant.h"

namespace squat::apps {
namespace {

struct QuantOptions {
  std::string keys, queries, out;
  std::string method = "squat";
  int bits = 2;
  int group_size = 32;
  int quant_group_size = 64;
  int subspace_dim = 20;
  double lambda = 0.001;
  std::string key_quant = "per-channel";
  std::string tensor = "keys";
};

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

void run_quant(const QuantOptions& o) {
  const bool values = o.tensor == "values";
  const bool squat = o.method == "squat" && !values;
  const kv::GroupLayout layout = (values || o.key_quant == "per-token")
                                     ? kv::GroupLayout::PerToken
                                     : kv::GroupLayout::PerChannel;
  if (o.group_size <= 0) fail_usage("--group-size must be positive, got {}", o.group_size);
  if (squat && o.quant_group_size <= 0) {
    fail_usage("--quant-group-size must be positive, got {}", o.quant_group_size);
  }
  if (o.subspace_dim < 0) fail_usage("--subspace-dim must be >= 0, got {}", o.subspace_dim);
  if (!(o.lambda >= 0) || !std::isfinite(o.lambda)) {
    fail_usage("--lambda must be finite and >= 0, got {}", o.lambda);
  }
  if (squat && o.queries.empty()) fail_usage("--method squat needs --queries Q.npy");

  const npy::Array k = read_matrix(o.keys, values ? "values" : "keys");
  const std::size_t n = k.shape[0], d = k.shape[1];
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

  double se = 0;
  for (std::size_t i = 0; i < khat.size(); ++i) {
    const double e = double(khat[i]) - double(k.data[i]);
    se += e * e;
  }
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
  fmt::print("{} mse: {:.6e}\n", values ? "value" : "key", se / double(n * d));
  if (!o.queries.empty()) {
    // ‖Q(K̂−K)ᵀ‖_F / ‖QKᵀ‖_F in double.
    double num = 0, den = 0;
    const std::size_t rows = q.shape[0];
    for (std::size_t i = 0; i < rows; ++i) {
      const float* qi = q.data.data() + i * d;
      for (std::size_t t = 0; t < n; ++t) {
        double dot = 0, err = 0;
        for (std::size_t c = 0; c < d; ++c) {
          dot += double(qi[c]) * double(k.data[t * d + c]);
          err += double(qi[c]) * (double(khat[t * d + c]) - double(k.data[t * d + c]));
        }
        num += err * err;
        den += dot * dot;
      }
    }
    fmt::print("relative logit error: {:.6e}\n", den > 0 ? std::sqrt(num / den) : 0.0);
  }
  fmt::print("wrote {}\n", o.out);
}

}  // namespace

void register_quant_command(CLI::App& app) {
  auto opts = std::make_shared<QuantOptions>();
  auto* cmd = app.add_subcommand(
      "quant", "Quantize a dumped key/value array (.npy [tokens, head_dim]) with KIVI or SQuat");
  cmd->add_option("--keys", opts->keys, "Keys (or values) .npy, float32/float16 [tokens, head_dim]")
      ->required();
  cmd->add_option("--queries", opts->queries,
                  "Queries .npy [rows, head_dim] (SQuat subspace, logit error)");
  cmd->add_option("--method", opts->method, "kivi or squat")
      ->check(CLI::IsMember({"kivi", "squat"}))
      ->capture_default_str();
  cmd->add_option("--bits", opts->bits, "Bits per code: 2, 4 or 8")
      ->check(CLI::IsMember({2, 4, 8}))
      ->capture_default_str();
  cmd->add_option("--group-size", opts->group_size,
                  "Tokens per per-channel group / channels per per-token group")
      ->capture_default_str();
  cmd->add_option("--quant-group-size", opts->quant_group_size,
                  "SQuat block size g (divides head_dim)")
      ->capture_default_str();
  cmd->add_option("--subspace-dim", opts->subspace_dim, "SQuat subspace dimension r")
      ->capture_default_str();
  cmd->add_option("--lambda", opts->lambda, "SQuat lambda")->capture_default_str();
  cmd->add_option("--key-quant", opts->key_quant, "per-channel or per-token")
      ->check(CLI::IsMember({"per-channel", "per-token"}))
      ->capture_default_str();
  cmd->add_option("--tensor", opts->tensor, "keys or values (values: per-token KIVI)")
      ->check(CLI::IsMember({"keys", "values"}))
      ->capture_default_str();
  cmd->add_option("--out", opts->out, "Output .npy (float32, dequantized)")->required();
  cmd->callback([opts] { run_quant(*opts); });
}

}  // namespace squat::apps
