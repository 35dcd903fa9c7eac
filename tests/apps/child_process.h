// A child process the test talks to while it runs: its standard input is a pipe the test
// writes, its standard output and error come back merged through another pipe, and the test can
// send it signals (Ctrl-C is SIGINT). Every wait has a deadline; the destructor kills a child
// that is still running, so a failing test never hangs.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

namespace squat::testing {

class ChildProcess {
 public:
  explicit ChildProcess(const std::vector<std::string>& argv) {
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], STDIN_FILENO);
      dup2(out[1], STDOUT_FILENO);
      dup2(out[1], STDERR_FILENO);
      close(in[0]);
      close(in[1]);
      close(out[0]);
      close(out[1]);
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    stdin_ = in[1];
    stdout_ = out[0];
    signal(SIGPIPE, SIG_IGN);  // a child that exited early must not kill the test
  }
  ~ChildProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close_stdin();
    if (stdout_ >= 0) close(stdout_);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool started() const { return pid_ > 0; }
  void write_input(const std::string& text) {
    if (stdin_ < 0) return;
    const ssize_t written = write(stdin_, text.data(), text.size());
    (void)written;  // a child that already exited reads nothing; its output tells the test
  }
  void close_stdin() {
    if (stdin_ >= 0) close(stdin_);
    stdin_ = -1;
  }
  void send_signal(int sig) { kill(pid_, sig); }

  // Reads output until it holds `text` at or after byte `from`; false at the deadline or EOF.
  bool wait_for(const std::string& text, double seconds, std::size_t from = 0) {
    return wait_until([&] { return output_.find(text, from) != std::string::npos; }, seconds);
  }
  // Reads output until it is at least `size` bytes long.
  bool wait_for_size(std::size_t size, double seconds) {
    return wait_until([&] { return output_.size() >= size; }, seconds);
  }
  // Reads the rest of the output and waits for the exit: the exit status, 128 + signal, or -1
  // when the deadline passed (the child is then killed).
  int wait_exit(double seconds) {
    wait_until([] { return false; }, seconds);
    if (!eof_) return -1;
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    int raw = 0;
    while (waitpid(pid_, &raw, WNOHANG) == 0) {
      if (Clock::now() > deadline) return -1;
      usleep(10000);
    }
    exited_ = true;
    return WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  }
  const std::string& output() const { return output_; }

 private:
  using Clock = std::chrono::steady_clock;

  template <typename Done>
  bool wait_until(Done done, double seconds) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    while (!done()) {
      if (eof_) return false;
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      pollfd p{stdout_, POLLIN, 0};
      if (poll(&p, 1, int(left.count())) <= 0) continue;
      char buffer[4096];
      const ssize_t got = read(stdout_, buffer, sizeof buffer);
      if (got <= 0) {
        eof_ = true;
      } else {
        output_.append(buffer, std::size_t(got));
      }
    }
    return true;
  }

  pid_t pid_ = -1;
  int stdin_ = -1, stdout_ = -1;
  bool eof_ = false, exited_ = false;
  std::string output_;
};

}  // namespace squat::testing
