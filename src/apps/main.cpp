#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "apps/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"squat: LLM inference with a 2-4 bit SQuat KV cache"};
  app.require_subcommand(1);
  squat::apps::register_run_command(app);
  squat::apps::register_quant_command(app);
  squat::apps::register_bench_command(app);
  squat::apps::register_perplexity_command(app);
  squat::apps::register_eval_command(app);
  squat::apps::register_serve_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints help or the message; --help exits 0, every usage error exits 2.
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const squat::Error& e) {
    fmt::print(stderr, "squat: {}\n", e.what());
    return e.exit_status();
  } catch (const std::exception& e) {
    fmt::print(stderr, "squat: {}\n", e.what());
    return 1;
  }
  return 0;
}
