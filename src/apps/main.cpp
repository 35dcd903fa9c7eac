#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <new>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "core/error.h"

#ifndef SQUAT_GIT_COMMIT
#define SQUAT_GIT_COMMIT "unknown"
#endif

namespace {

// llama.cpp spells some long options with one dash (-ngl, -ctk, ...); CLI11 reads "-ngl" as the
// short flag -n with the value "gl", a misleading error. They are rewritten to our long names.
const std::map<std::string, std::string> kLlamaSpellings = {
    {"-ngl", "--n-gpu-layers"},  {"-cnv", "--conversation"}, {"-ctk", "--cache-type-k"},
    {"-ctv", "--cache-type-v"},  {"-tb", "--threads-batch"}, {"-fa", "--flash-attn"},
    {"-sys", "--system-prompt"},
};

// Options whose next argument is free text (it may start with a dash).
bool takes_text(const std::string& arg) {
  for (const char* name : {"-p", "--prompt", "-sys", "--system", "--system-prompt", "-r",
                           "--reverse-prompt", "--stop"}) {
    if (arg == name) return true;
  }
  return false;
}

// "-xyz": one dash, then two or more characters that are not just a number (-t4 and -n128 are
// a short flag with its value; -0.5 is a value).
bool looks_like_single_dash_long(const std::string& arg) {
  if (arg.size() < 3 || arg[0] != '-' || arg[1] == '-') return false;
  if (!std::isalpha(static_cast<unsigned char>(arg[1]))) return false;
  for (std::size_t i = 2; i < arg.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(arg[i]))) return true;
  }
  return false;
}

struct UnknownFlag {
  std::string flag;
};

std::vector<std::string> rewrite_llama_spellings(int argc, char** argv) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    const bool is_text = !args.empty() && takes_text(args.back());
    if (!is_text) {
      const auto known = kLlamaSpellings.find(arg);
      if (known != kLlamaSpellings.end()) {
        arg = known->second;
      } else if (looks_like_single_dash_long(arg)) {
        throw UnknownFlag{arg};
      }
    }
    args.push_back(arg);
  }
  return args;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"squat: LLM inference with a 2-4 bit SQuat KV cache"};
  app.require_subcommand(1);
  squat::apps::register_run_command(app);
  squat::apps::register_quant_command(app);
  squat::apps::register_bench_command(app);
  squat::apps::register_perplexity_command(app);
  squat::apps::register_eval_command(app);
  squat::apps::register_serve_command(app);
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--version") == 0) {
      fmt::print("squat (git commit {}), CPU-only build\n", SQUAT_GIT_COMMIT);
      return 0;
    }
  }
  try {
    std::vector<std::string> args = rewrite_llama_spellings(argc, argv);
    std::reverse(args.begin(), args.end());  // CLI11 takes the arguments in reverse order
    app.parse(args);
  } catch (const UnknownFlag& e) {
    fmt::print(stderr, "squat: unknown flag {} (squat COMMAND --help lists the flags)\n", e.flag);
    return 2;
  } catch (const CLI::ExtrasError& e) {
    // An argument no option wanted: usually an unknown --flag. CLI11's message lists them after
    // "The following arguments were not expected: ".
    const std::string what = e.what();
    const std::size_t colon = what.find(": ");
    fmt::print(stderr,
               "squat: unknown flag or argument: {} (squat COMMAND --help lists the flags)\n",
               colon == std::string::npos ? what : what.substr(colon + 2));
    return 2;
  } catch (const CLI::ParseError& e) {
    // CLI11 prints help or the message; --help exits 0, every usage error exits 2.
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const squat::Error& e) {
    fmt::print(stderr, "squat: {}\n", e.what());
    return e.exit_status();
  } catch (const std::bad_alloc&) {
    fmt::print(stderr,
               "squat: out of memory (a smaller context -c, prompt batch -b or a quantized --kv "
               "cache needs less)\n");
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "squat: {}\n", e.what());
    return 1;
  }
  return 0;
}
