// `squat eval gsm8k` and `squat eval passkey`: task accuracy of the engine with a given KV-cache
// method (see docs/quality.md for the exact protocols).
//
// gsm8k: 5-shot prompt (the first five problems of train-first50.jsonl as "Question: ..\nAnswer:
// ..\n", then "Question: <q>\nAnswer:") or the chat template (--chat), greedy decoding, the final
// number (after "####", else the last number; the answer is cut at the next "Question:") compared
// with the reference's; results are appended to a JSONL file so an interrupted run resumes where
// it stopped (and says so). --parallel problems decode together through the batched decoder; with
// a full-precision cache the few-shot prefix is prefilled once and replayed into each problem's
// cache (what its own prefill would store; quantized caches prefill each prompt whole).
// passkey: a random 5-digit key hidden at several depths of filler text; the haystack is fed as
// the prompt, the question afterwards (so it reads the cache), then a few greedy tokens.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "apps/model_options.h"
#include "apps/quality_progress.h"
#include "apps/stats.h"
#include "core/error.h"
#include "core/files.h"
#include "model/batch_decode.h"
#include "model/generate.h"

namespace squat::apps {

namespace {

// A label of the cache method and its flags, stored with every result.
std::string method_label(const ModelOptions& o) {
  std::string label = kv::to_string(o.kv);
  if (kv::has_residual_window(o.kv)) {
    label += fmt::format("-k{}v{}-g{}-r{}", o.k_bits, o.v_bits, o.group_size, o.residual_length);
    if (o.kv == kv::CacheMethod::Squat) {
      label += fmt::format("-d{}-l{}", o.subspace_dim, o.lambda);
      if (o.quant_group_size > 0) label += fmt::format("-qg{}", o.quant_group_size);
    }
    if (o.key_quant != "per-channel") label += "-" + o.key_quant;
  }
  if (o.hadamard) label += "-hadamard";
  if (!o.key_rope.empty()) label += "-key" + o.key_rope;
  return label;
}

std::vector<nlohmann::json> read_jsonl(const std::string& path, bool must_exist) {
  std::ifstream in(path);
  if (!in) {
    if (must_exist) fail("cannot open '{}': {}", path, std::strerror(errno));
    return {};
  }
  std::vector<nlohmann::json> rows;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    try {
      rows.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception& e) {
      fail("'{}' line {}: not JSON ({})", path, number, e.what());
    }
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// GSM8K

struct Gsm8kOptions {
  ModelOptions model;
  std::string data_dir;  // empty: default_data_dir()
  int limit = 50;
  int shots = 5;
  bool chat = false;
  int max_tokens = 256;
  int parallel = 4;          // problems decoded together
  bool prefix_cache = true;  // full-precision caches: prefill the few-shot prefix once
  std::string results_path;
  std::string json_path;
};

// The evaluation data folder when --data-dir is not given: $SQUAT_DATA, else the first
// `shared/data` holding gsm8k/test.jsonl in a folder above the executable or above the working
// directory (so the command finds it from any working directory).
std::string default_data_dir() {
  if (const char* env = std::getenv("SQUAT_DATA"); env && *env) return env;
  namespace fs = std::filesystem;
  std::vector<fs::path> starts;
  std::error_code ec;
  if (fs::path exe = fs::read_symlink("/proc/self/exe", ec); !ec)
    starts.push_back(exe.parent_path());
  if (fs::path cwd = fs::current_path(ec); !ec) starts.push_back(cwd);
  for (fs::path dir : starts) {
    for (; !dir.empty(); dir = dir.parent_path()) {
      const fs::path candidate = dir / "shared" / "data";
      if (fs::exists(candidate / "gsm8k" / "test.jsonl", ec)) return candidate.string();
      if (dir == dir.parent_path()) break;
    }
  }
  fail_usage(
      "cannot find the GSM8K data (gsm8k/test.jsonl in a shared/data folder above the executable "
      "or the working directory): give --data-dir or set SQUAT_DATA");
}

// Numbers as written in answers: "1,234", "-5", "3.50", "$18".
std::string normalize_number(std::string s) {
  s.erase(std::remove(s.begin(), s.end(), ','), s.end());
  if (const auto dot = s.find('.'); dot != std::string::npos) {
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
  }
  return s;
}

// The final number of an answer: the first number after "####", else the last number.
std::string extract_answer(const std::string& text) {
  static const std::regex number(R"(-?[0-9][0-9,]*(\.[0-9]+)?)");
  const auto hashes = text.find("####");
  if (hashes != std::string::npos) {
    std::smatch m;
    const std::string tail = text.substr(hashes + 4);
    if (std::regex_search(tail, m, number)) return normalize_number(m.str());
  }
  std::string last;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), number);
       it != std::sregex_iterator(); ++it) {
    last = it->str();
  }
  return last.empty() ? "" : normalize_number(last);
}

bool gsm8k_stop(const std::string& text) {
  if (text.find("Question:") != std::string::npos) return true;
  const auto hashes = text.find("####");
  return hashes != std::string::npos && text.find('\n', hashes) != std::string::npos;
}

std::string gsm8k_cut(std::string text) {
  if (const auto q = text.find("Question:"); q != std::string::npos) text.resize(q);
  return text;
}

// Records the keys and values a cache is given (layer by layer, as append receives them), so a
// prompt prefix computed once can be replayed into fresh caches. Only for full-precision caches:
// they store exactly what they are given and their attention reads the store, so a replayed
// prefix followed by the rest of the prompt computes what one prefill of the whole prompt does.
class RecordingCache final : public ForwardingCache {
 public:
  RecordingCache(std::unique_ptr<AttentionCache> inner, const KvShape& shape)
      : ForwardingCache(std::move(inner)),
        row_(std::size_t(shape.n_kv_heads) * std::size_t(shape.head_dim)),
        keys_(std::size_t(shape.n_layers)),
        values_(std::size_t(shape.n_layers)) {}
  void on_append(int layer, const float* k, const float* v, int n) override {
    auto& keys = keys_[std::size_t(layer)];
    auto& values = values_[std::size_t(layer)];
    keys.insert(keys.end(), k, k + std::size_t(n) * row_);
    values.insert(values.end(), v, v + std::size_t(n) * row_);
  }
  void clear() override { fail("a recorded prompt prefix cannot be cleared"); }

  // Feeds the recorded tokens to `cache` (which must be empty) in the order they came.
  void replay(AttentionCache& cache) const {
    for (std::size_t layer = 0; layer < keys_.size(); ++layer) {
      cache.append(int(layer), keys_[layer].data(), values_[layer].data(),
                   int(keys_[layer].size() / row_));
    }
  }

 private:
  std::size_t row_;
  std::vector<std::vector<float>> keys_, values_;
};

bool full_precision(const ModelOptions& o) { return !kv::is_quantized(o.kv); }

void eval_gsm8k(const Gsm8kOptions& options) {
  if (options.limit < 1) fail_usage("--limit must be >= 1, got {}", options.limit);
  if (options.shots < 0 || options.shots > 50) {
    fail_usage("--shots must be in [0, 50], got {}", options.shots);
  }
  if (options.max_tokens < 1) fail_usage("--max-tokens must be >= 1, got {}", options.max_tokens);
  if (options.parallel < 1 || options.parallel > 64) {
    fail_usage("--parallel must be in [1, 64], got {}", options.parallel);
  }
  const std::string data_dir = options.data_dir.empty() ? default_data_dir() : options.data_dir;
  const auto test = read_jsonl(data_dir + "/gsm8k/test.jsonl", true);
  const auto train = read_jsonl(data_dir + "/gsm8k/train-first50.jsonl", true);
  if (int(train.size()) < options.shots) {
    fail("{}/gsm8k/train-first50.jsonl has {} problems, fewer than --shots {}", data_dir,
         train.size(), options.shots);
  }
  const std::string method = method_label(options.model);
  const std::string format = options.chat ? "chat" : fmt::format("{}-shot", options.shots);
  std::string results_path = options.results_path;
  if (results_path.empty()) results_path = fmt::format("gsm8k-{}-{}.jsonl", method, format);

  // Resume: ids already answered with this method and format are skipped.
  std::map<int, nlohmann::json> done;
  for (const auto& row : read_jsonl(results_path, false)) {
    if (row.value("method", "") == method && row.value("format", "") == format) {
      done[row.at("id").get<int>()] = row;
    }
  }
  const int n = std::min<int>(options.limit, int(test.size()));
  std::vector<int> todo;
  for (int id = 0; id < n; ++id) {
    if (!done.count(id)) todo.push_back(id);
  }
  int already = 0;
  for (const auto& [id, row] : done) already += id < n;
  if (already > 0) {
    fmt::print(stderr, "gsm8k: resuming from {}: {} of {} problems already answered, {} to go\n",
               results_path, already, n, todo.size());
  }

  std::string few_shot;
  std::vector<ChatMessage> chat_shots;
  for (int s = 0; s < options.shots; ++s) {
    const std::string q = train[std::size_t(s)].at("question").get<std::string>();
    const std::string a = train[std::size_t(s)].at("answer").get<std::string>();
    few_shot += fmt::format("Question: {}\nAnswer: {}\n", q, a);
    chat_shots.push_back({"user", "Question: " + q});
    chat_shots.push_back({"assistant", "Answer: " + a});
  }

  if (!todo.empty()) {
    LoadedModel loaded = load_model(options.model);
    const Model& model = *loaded.model;
    const Tokenizer& tokenizer = *loaded.tokenizer;
    const int vocab = model.config().vocab_size;
    const int capacity = loaded.context->max_tokens();
    loaded.context.reset();  // the batched decoder below makes one cache per problem

    // Every prompt, tokenized up front (the decoder's buffers are sized for the longest).
    std::vector<std::vector<int32_t>> prompts(todo.size());
    std::vector<std::string> golds(todo.size());
    std::size_t longest = 1;
    for (std::size_t i = 0; i < todo.size(); ++i) {
      const auto& problem = test[std::size_t(todo[i])];
      const std::string question = problem.at("question").get<std::string>();
      golds[i] = extract_answer(problem.at("answer").get<std::string>());
      if (options.chat) {
        auto messages = chat_shots;
        messages.push_back({"user", "Question: " + question});
        // Questions are text: control tokens only where the template writes them.
        RenderedChat chat = render_chat_template(model.file(), messages, true);
        chat.text += "Answer:";
        prompts[i] = tokenizer.encode_chat(chat, true);
      } else {
        prompts[i] = tokenizer.encode(few_shot + fmt::format("Question: {}\nAnswer:", question),
                                      true, false);
      }
      if (int(prompts[i].size()) + options.max_tokens > capacity) {
        fail(
            "gsm8k problem {}: the prompt has {} tokens and up to {} are generated, but the "
            "context holds {} (raise -c/--context)",
            todo[i], prompts[i].size(), options.max_tokens, capacity);
      }
      longest = std::max(longest, prompts[i].size());
    }

    // The few-shot prefix is the same for every problem. A full-precision cache of it is
    // computed once and replayed into each problem's cache (the same keys and values the
    // problem's own prefill would store); quantized caches prefill every prompt whole, since
    // there the prompt attends to itself in full precision and SQuat builds its subspace from
    // the whole prompt's queries.
    const bool reuse_prefix =
        options.prefix_cache && !options.chat && options.shots > 0 && full_precision(options.model);
    std::vector<int32_t> prefix;
    BatchDecoder decoder(model, *loaded.pool,
                         int(std::max<std::size_t>(longest, std::size_t(options.parallel))));
    std::unique_ptr<BatchSequence> prefix_sequence;
    const RecordingCache* prefix_recording = nullptr;
    if (reuse_prefix) {
      prefix = tokenizer.encode(few_shot, true, false);
      auto recorder = std::make_unique<RecordingCache>(make_cache(model, options.model, capacity),
                                                       model.kv_shape(capacity));
      prefix_recording = recorder.get();
      prefix_sequence = std::make_unique<BatchSequence>(std::move(recorder));
      const BatchInput input{prefix_sequence.get(), prefix, false};
      decoder.eval(std::span<const BatchInput>(&input, 1));
    }

    std::ofstream out(results_path, std::ios::app);
    if (!out) fail("cannot append to '{}': {}", results_path, std::strerror(errno));
    ProgressBar bar("gsm8k " + method, long(todo.size()), "problems");
    struct Active {
      std::size_t index;  // into todo
      std::unique_ptr<BatchSequence> sequence;
      int32_t next = 0;
      int generated = 0;
      std::string output;
      std::chrono::steady_clock::time_point start;
    };
    std::vector<Active> active;
    std::size_t started = 0;
    int finished = 0;
    std::vector<BatchInput> inputs;
    while (started < todo.size() || !active.empty()) {
      // Fill free slots: each new problem's prompt (after the replayed prefix) in its own step.
      while (active.size() < std::size_t(options.parallel) && started < todo.size()) {
        Active a;
        a.index = started++;
        a.start = std::chrono::steady_clock::now();
        auto cache = make_cache(model, options.model, capacity);
        std::span<const int32_t> rest = prompts[a.index];
        if (reuse_prefix && rest.size() > prefix.size() &&
            std::equal(prefix.begin(), prefix.end(), rest.begin())) {
          prefix_recording->replay(*cache);
          rest = rest.subspan(prefix.size());
        }
        a.sequence = std::make_unique<BatchSequence>(std::move(cache));
        const BatchInput input{a.sequence.get(), rest, true};
        a.next = Sampler::argmax(decoder.eval(std::span<const BatchInput>(&input, 1)), vocab);
        active.push_back(std::move(a));
      }
      // Take every sequence's sampled token; finish those that stop (as `generate` does).
      inputs.clear();
      for (std::size_t i = 0; i < active.size();) {
        Active& a = active[i];
        bool stop = tokenizer.is_eog(a.next);
        if (!stop) {
          ++a.generated;
          a.output += tokenizer.token_to_piece(a.next);
          stop = gsm8k_stop(a.output) || a.generated == options.max_tokens ||
                 a.sequence->n_past() >= a.sequence->capacity();
        }
        if (!stop) {
          inputs.push_back(BatchInput{a.sequence.get(), std::span<const int32_t>(&a.next, 1)});
          ++i;
          continue;
        }
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - a.start).count();
        const int id = todo[a.index];
        const std::string answer = gsm8k_cut(a.output);
        const std::string predicted = extract_answer(answer);
        const nlohmann::json row = {{"id", id},
                                    {"method", method},
                                    {"format", format},
                                    {"gold", golds[a.index]},
                                    {"predicted", predicted},
                                    {"correct", !predicted.empty() && predicted == golds[a.index]},
                                    {"prompt_tokens", prompts[a.index].size()},
                                    {"generated_tokens", a.generated},
                                    {"seconds", seconds},
                                    {"output", answer}};
        out << row.dump() << "\n";
        out.flush();
        if (!out) fail("writing '{}' failed", results_path);
        done[id] = row;
        ++finished;
        bar.update(finished, finished);
        active.erase(active.begin() + std::ptrdiff_t(i));
      }
      if (inputs.empty()) continue;
      // One decode step for every running problem: the weights are read once for all of them.
      const float* logits = decoder.eval(inputs);
      for (std::size_t i = 0; i < active.size(); ++i) {
        active[i].next = Sampler::argmax(logits + i * std::size_t(vocab), vocab);
      }
    }
    bar.finish();
  }

  long correct = 0, total = 0;
  for (int id = 0; id < n; ++id) {
    ++total;
    correct += done.at(id).value("correct", false) ? 1 : 0;
  }
  const auto [lo, hi] = wilson_interval(correct, total);
  const double accuracy = double(correct) / double(total);
  fmt::print(
      "gsm8k {} | {} | {}/{} correct = {:.3f} (95% Wilson interval {:.3f} .. {:.3f}) | "
      "results in {}\n",
      format, method, correct, total, accuracy, lo, hi, results_path);
  if (!options.json_path.empty()) {
    const nlohmann::json summary = {
        {"task", "gsm8k"},        {"method", method},  {"kv", kv::to_string(options.model.kv)},
        {"format", format},       {"problems", total}, {"correct", correct},
        {"accuracy", accuracy},   {"wilson_low", lo},  {"wilson_high", hi},
        {"results", results_path}};
    write_file_atomically(options.json_path, summary.dump(2) + "\n");
  }
}

// ---------------------------------------------------------------------------------------------
// Pass key retrieval

struct PasskeyOptions {
  ModelOptions model;
  std::vector<int> lengths{1024, 2048, 4096, 8000};
  std::vector<int> depths{0, 25, 50, 75, 100};
  int trials = 2;
  uint64_t seed = 1;
  std::string json_path;
};

constexpr const char* kIntro =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n";
constexpr const char* kFiller =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
constexpr const char* kQuestion = "\nWhat is the pass key? The pass key is";

// The haystack of about `length` tokens (question included) with the key after `depth`% of the
// filler sentences.
std::string haystack(const Tokenizer& tokenizer, int length, int depth, const std::string& key,
                     int question_tokens) {
  const std::string needle =
      fmt::format("The pass key is {0}. Remember it. {0} is the pass key. ", key);
  auto build = [&](int units) {
    const int before = int(std::lround(double(units) * depth / 100.0));
    std::string text = kIntro;
    for (int i = 0; i < before; ++i) text += kFiller;
    text += needle;
    for (int i = before; i < units; ++i) text += kFiller;
    return text;
  };
  const int per_unit = std::max<int>(1, int(tokenizer.encode(kFiller, false, false).size()));
  int units = std::max(0, (length - question_tokens) / per_unit);
  std::string text = build(units);
  while (units > 0 && int(tokenizer.encode(text, true, false).size()) + question_tokens > length) {
    text = build(--units);
  }
  return text;
}

void eval_passkey(const PasskeyOptions& options) {
  if (options.trials < 1) fail_usage("--trials must be >= 1, got {}", options.trials);
  for (int l : options.lengths) {
    if (l < 64) fail_usage("--lengths values must be >= 64, got {}", l);
  }
  for (int d : options.depths) {
    if (d < 0 || d > 100) fail_usage("--depths values must be in [0, 100], got {}", d);
  }
  const int longest = *std::max_element(options.lengths.begin(), options.lengths.end());
  ModelOptions model_options = options.model;
  model_options.context = std::max(model_options.context, longest + 16);
  LoadedModel loaded = load_model(model_options);
  const Tokenizer& tokenizer = *loaded.tokenizer;
  InferenceContext& context = *loaded.context;
  const std::string method = method_label(options.model);
  const std::vector<int32_t> question = tokenizer.encode(kQuestion, false, false);
  std::mt19937_64 rng(options.seed);
  std::uniform_int_distribution<int> digits(10000, 99999);
  SamplerParams greedy;
  greedy.temperature = 0;

  struct Cell {
    int length, depth, correct = 0, trials = 0, prompt_tokens = 0;
  };
  std::vector<Cell> cells;
  nlohmann::json samples = nlohmann::json::array();
  const long total = long(options.lengths.size() * options.depths.size()) * options.trials;
  ProgressBar bar("passkey " + method, total, "prompts");
  long finished = 0;
  for (int length : options.lengths) {
    for (int depth : options.depths) {
      Cell cell{length, depth};
      for (int trial = 0; trial < options.trials; ++trial) {
        const std::string key = std::to_string(digits(rng));
        const std::vector<int32_t> prompt = tokenizer.encode(
            haystack(tokenizer, length, depth, key, int(question.size())), true, false);
        cell.prompt_tokens = int(prompt.size() + question.size());
        context.reset();
        context.eval(prompt);  // the haystack: one prompt, dense attention among its tokens
        Sampler sampler(greedy);
        std::string output;
        // The question is fed after the haystack, so it reads the key through the cache.
        generate(context, tokenizer, question, 8, sampler, [&](int32_t token) {
          output += tokenizer.token_to_piece(token);
          return output.size() < 24;
        });
        const bool ok = output.find(key) != std::string::npos;
        cell.correct += ok;
        ++cell.trials;
        samples.push_back({{"length", length},
                           {"depth", depth},
                           {"key", key},
                           {"output", output},
                           {"correct", ok}});
        ++finished;
        bar.update(finished, finished);
      }
      cells.push_back(cell);
    }
  }
  bar.finish();

  fmt::print("passkey | {} | {} trials per cell | accuracy per length (rows) and depth %:\n",
             method, options.trials);
  fmt::print("{:>8}", "length");
  for (int d : options.depths) fmt::print(" {:>6}", d);
  fmt::print(" {:>8}\n", "all");
  nlohmann::json rows = nlohmann::json::array();
  for (int length : options.lengths) {
    fmt::print("{:>8}", length);
    int c = 0, t = 0;
    for (const Cell& cell : cells) {
      if (cell.length != length) continue;
      fmt::print(" {:>6.2f}", double(cell.correct) / cell.trials);
      c += cell.correct;
      t += cell.trials;
      rows.push_back({{"length", length},
                      {"depth", cell.depth},
                      {"correct", cell.correct},
                      {"trials", cell.trials},
                      {"prompt_tokens", cell.prompt_tokens}});
    }
    fmt::print(" {:>8.3f}\n", double(c) / t);
  }
  if (!options.json_path.empty()) {
    const nlohmann::json out = {
        {"task", "passkey"},        {"method", method},     {"kv", kv::to_string(options.model.kv)},
        {"trials", options.trials}, {"seed", options.seed}, {"cells", rows},
        {"samples", samples}};
    write_file_atomically(options.json_path, out.dump(2) + "\n");
  }
}

}  // namespace

void register_eval_command(CLI::App& app) {
  auto* eval = app.add_subcommand("eval", "Task accuracy with a KV-cache method (gsm8k, passkey)");
  eval->require_subcommand(1);

  auto gsm = std::make_shared<Gsm8kOptions>();
  auto* g = eval->add_subcommand("gsm8k", "GSM8K exact-match accuracy, greedy, resumable");
  add_model_options(*g, gsm->model);
  g->add_option("--data-dir", gsm->data_dir,
                "Folder holding gsm8k/test.jsonl (default: $SQUAT_DATA, else the shared/data "
                "folder found above the executable or the working directory)");
  g->add_option("--limit", gsm->limit, "Test problems (the first N)")->capture_default_str();
  g->add_option("--shots", gsm->shots, "Few-shot examples from train-first50.jsonl")
      ->capture_default_str();
  g->add_flag("--chat", gsm->chat, "Use the chat template (shots as earlier turns)");
  g->add_option("--max-tokens", gsm->max_tokens, "Most tokens generated per problem")
      ->capture_default_str();
  g->add_option("--parallel", gsm->parallel,
                "Problems decoded together in one batched forward pass (weights read once per "
                "step)")
      ->capture_default_str();
  g->add_flag("!--no-prefix-cache", gsm->prefix_cache,
              "f16/f32 caches: prefill every prompt whole instead of computing the shared "
              "few-shot prefix once (the same numbers, slower)");
  g->add_option("--results", gsm->results_path,
                "JSONL file results are appended to (and read to resume); default "
                "gsm8k-<method>-<format>.jsonl");
  g->add_option("--json", gsm->json_path, "Also write the summary as JSON");
  g->callback([gsm] { eval_gsm8k(*gsm); });

  auto pk = std::make_shared<PasskeyOptions>();
  auto* p = eval->add_subcommand("passkey", "Pass-key retrieval accuracy per length and depth");
  add_model_options(*p, pk->model);
  p->add_option("--lengths", pk->lengths, "Prompt lengths in tokens")->delimiter(',');
  p->add_option("--depths", pk->depths, "Depths of the key in percent")->delimiter(',');
  p->add_option("--trials", pk->trials, "Random keys per length and depth")->capture_default_str();
  p->add_option("--seed", pk->seed, "Seed of the keys")->capture_default_str();
  p->add_option("--json", pk->json_path, "Also write the results as JSON");
  p->callback([pk] { eval_passkey(*pk); });
}

}  // namespace squat::apps
