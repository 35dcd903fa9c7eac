// Subcommands of the `squat` command line. Each registers itself on the CLI11 app and sets a
// callback that runs it; errors are thrown as squat::Error and mapped to exit codes by main().
#pragma once

#include <CLI/CLI.hpp>

namespace squat::apps {

void register_quant_command(CLI::App& app);  // quant_command.cpp
void register_run_command(CLI::App& app);    // run_command.cpp (run, chat)
void register_bench_command(CLI::App& app);  // bench_command.cpp
void register_perplexity_command(CLI::App& app);  // perplexity_command.cpp
void register_eval_command(CLI::App& app);        // eval_command.cpp (gsm8k, passkey)
void register_serve_command(CLI::App& app);       // serve_command.cpp

}  // namespace squat::apps
