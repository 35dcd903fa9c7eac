#include "server/transport.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "server/request.h"

namespace squat::server {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

thread_local Connection* t_connection = nullptr;
// Set while the accepting thread itself runs a connection it has no thread for: answer 503.
thread_local bool t_refuse = false;

int poll_ms(Clock::duration left) {
  return int(std::clamp<int64_t>(std::chrono::ceil<milliseconds>(left).count(), 0, 100));
}

// Waits up to `timeout` for `events` on fd; false on timeout, error or hang-up without data.
bool wait_for(int fd, short events, milliseconds timeout) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int r = poll(&p, 1, int(timeout.count()));
    if (r > 0) return (p.revents & events) != 0;
    if (r == 0 || errno != EINTR) return false;
  }
}

bool peer_closed(int fd) {
  char byte;
  const ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

void address(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  const int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                     : getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  if (r != 0) return;
  char text[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
    port = ntohs(a->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
    port = ntohs(a->sin6_port);
  }
  ip = text;
}

// A whole response written without httplib (no request was parsed), never blocking.
void write_refusal(int fd, int status, const char* reason, const std::string& message) {
  const std::string body = error_body(message, "invalid_request_error", "");
  const std::string out = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
      "Connection: close\r\n{}\r\n{}",
      status, reason, body.size(), status == 503 ? "Retry-After: 1\r\n" : "", body);
  [[maybe_unused]] const ssize_t n = send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

double seconds(milliseconds d) { return double(d.count()) / 1000.0; }

// Reads the socket through a small buffer (httplib reads headers a byte at a time) and refuses,
// by failing the read, a request that takes longer than the deadline, has too many or too long
// header lines, or more bytes than allowed.
class LimitedStream final : public httplib::Stream {
 public:
  LimitedStream(int fd, const TransportLimits& limits, Connection& connection)
      : fd_(fd), limits_(limits), connection_(connection) {}

  void begin_request() {
    deadline_ = Clock::now() + limits_.request_timeout;
    in_headers_ = true;
    lines_ = line_length_ = 0;
    header_bytes_ = request_bytes_ = 0;
    last_ = 0;
  }
  bool has_buffered() const { return off_ < end_; }

  bool is_readable() const override {
    return has_buffered() || wait_for(fd_, POLLIN,
                                      std::max(milliseconds(0), std::chrono::ceil<milliseconds>(
                                                                    deadline_ - Clock::now())));
  }
  bool is_writable() const override {
    return wait_for(fd_, POLLOUT, limits_.write_timeout) && !peer_closed(fd_);
  }

  ssize_t read(char* ptr, size_t size) override {
    if (!has_buffered()) {
      for (;;) {
        const auto left = deadline_ - Clock::now();
        if (left <= Clock::duration::zero()) {
          return refuse(408, fmt::format("the request did not arrive within {:g} s "
                                         "(--request-timeout)",
                                         seconds(limits_.request_timeout)));
        }
        pollfd p{fd_, POLLIN, 0};
        const int r = poll(&p, 1, poll_ms(left));
        if (r > 0) break;
        if (r < 0 && errno != EINTR) return -1;
      }
      const ssize_t n = recv(fd_, buffer_, sizeof buffer_, 0);
      if (n <= 0) return n;
      off_ = 0;
      end_ = std::size_t(n);
    }
    std::size_t k = std::min(size, end_ - off_);
    if (in_headers_) {
      for (std::size_t i = 0; i < k; ++i) {
        const char c = buffer_[off_ + i];
        ++header_bytes_;
        if (c == '\n') {
          if (line_length_ == 1 && last_ == '\r') {  // the blank line: headers end here
            in_headers_ = false;
            k = i + 1;
            break;
          }
          line_length_ = 0;
          if (++lines_ > limits_.max_header_lines) {
            return refuse(431, fmt::format("the request has more than {} header lines",
                                           limits_.max_header_lines - 1));
          }
        } else {
          ++line_length_;
        }
        last_ = c;
      }
      if (header_bytes_ > limits_.max_header_bytes) {
        return refuse(
            431, fmt::format("the request's headers exceed {} bytes", limits_.max_header_bytes));
      }
    }
    if (request_bytes_ + k > limits_.max_request_bytes) {
      return refuse(413, fmt::format("the request exceeds {} bytes as sent (--max-body plus "
                                     "headers and framing)",
                                     limits_.max_request_bytes));
    }
    request_bytes_ += k;
    std::copy(buffer_ + off_, buffer_ + off_ + k, ptr);
    off_ += k;
    return ssize_t(k);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!wait_for(fd_, POLLOUT, limits_.write_timeout)) return -1;
    connection_.responded = true;
    return send(fd_, ptr, size, MSG_NOSIGNAL);
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    address(fd_, true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    address(fd_, false, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  ssize_t refuse(int status, std::string message) {
    if (connection_.refused_status == 0) {
      connection_.refused_status = status;
      connection_.refused_message = std::move(message);
    }
    return -1;
  }

  int fd_;
  const TransportLimits& limits_;
  Connection& connection_;
  char buffer_[4096];
  std::size_t off_ = 0, end_ = 0;
  Clock::time_point deadline_ = Clock::now();
  bool in_headers_ = true;
  int lines_ = 0, line_length_ = 0;
  std::size_t header_bytes_ = 0, request_bytes_ = 0;
  char last_ = 0;
};

}  // namespace

// Connections being served, and whether each still waits for its request's bytes.
struct BoundedServer::Registry {
  struct Entry {
    int fd;
    bool reading;
    Clock::time_point since;
  };
  std::mutex mutex;
  std::condition_variable none_left;
  std::condition_variable changed;  // a connection registered, or a thread ended
  int threads = 0;
  std::map<Connection*, Entry> connections;

  void set(Connection* c, bool reading) {
    std::lock_guard lock(mutex);
    auto& e = connections[c];
    e.fd = c->fd;
    e.reading = reading;
    e.since = Clock::now();
    changed.notify_all();
  }
  void remove(Connection* c) {
    std::lock_guard lock(mutex);
    connections.erase(c);
    changed.notify_all();
  }
  // Shuts down the connection that has waited longest for its request's bytes; false when
  // every connection is being answered.
  bool evict_oldest_reader_locked() {
    Entry* oldest = nullptr;
    for (auto& [c, e] : connections) {
      if (e.reading && (!oldest || e.since < oldest->since)) oldest = &e;
    }
    if (!oldest) return false;
    shutdown(oldest->fd, SHUT_RDWR);
    oldest->reading = false;
    return true;
  }
  // Server stopping: connections still waiting for a request close now.
  void drop_readers() {
    std::lock_guard lock(mutex);
    for (auto& [c, e] : connections) {
      if (e.reading) shutdown(e.fd, SHUT_RDWR);
    }
  }
};

namespace {

// One thread per connection, at most `cap` (plus evicted ones on their way out).
class ConnectionThreads final : public httplib::TaskQueue {
 public:
  ConnectionThreads(std::shared_ptr<BoundedServer::Registry> registry, int cap)
      : registry_(std::move(registry)), cap_(cap) {}

  void enqueue(std::function<void()> fn) override {
    auto& r = *registry_;
    {
      std::unique_lock lock(r.mutex);
      // Room, or an evicted reader's; threads just started may not have registered yet, and
      // evicted ones take a moment to end: wait a little for either before refusing.
      auto room = [&] {
        return r.threads < cap_ ||
               (r.threads < cap_ + cap_ / 4 + 1 && r.evict_oldest_reader_locked());
      };
      if (room() || r.changed.wait_for(lock, milliseconds(250), room)) {
        ++r.threads;
        try {
          std::thread([registry = registry_, fn] {
            fn();
            std::lock_guard done(registry->mutex);
            if (--registry->threads == 0) registry->none_left.notify_all();
            registry->changed.notify_all();
          }).detach();
          return;
        } catch (const std::system_error&) {  // no thread to be had: refuse like a full server
          --r.threads;
        }
      }
    }
    t_refuse = true;
    fn();
    t_refuse = false;
  }

  void shutdown() override {
    std::unique_lock lock(registry_->mutex);
    registry_->none_left.wait(lock, [&] { return registry_->threads == 0; });
  }

 private:
  std::shared_ptr<BoundedServer::Registry> registry_;
  int cap_;
};

}  // namespace

Connection* current_connection() { return t_connection; }

bool client_gone() {
  if (!t_connection) return false;
  pollfd p{t_connection->fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLHUP | POLLERR | POLLRDHUP)) return true;
  return (p.revents & POLLIN) && peer_closed(t_connection->fd);
}

BoundedServer::BoundedServer(TransportLimits limits)
    : limits_(limits), registry_(std::make_shared<Registry>()) {
  const int cap = std::max(1, limits_.max_connections);
  new_task_queue = [registry = registry_, cap] { return new ConnectionThreads(registry, cap); };
  set_keep_alive_max_count(std::size_t(std::max(1, limits_.keep_alive_requests)));
}

BoundedServer::~BoundedServer() = default;

void BoundedServer::wait_answered(milliseconds limit) {
  std::unique_lock lock(registry_->mutex);
  registry_->changed.wait_for(lock, limit, [&] {
    for (const auto& [c, e] : registry_->connections)
      if (!e.reading) return false;
    return true;
  });
}

void BoundedServer::stop_serving() {
  stop();
  registry_->drop_readers();
}

void BoundedServer::mark_handling() {
  if (t_connection) registry_->set(t_connection, false);
}

bool BoundedServer::process_and_close_socket(socket_t sock) {
  if (t_refuse) {
    write_refusal(sock, 503, "Service Unavailable",
                  fmt::format("the server has {} connections open, all being answered; retry "
                              "later (--max-connections)",
                              limits_.max_connections));
    if (on_refusal) on_refusal(503);
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return false;
  }
  Connection connection;
  connection.fd = sock;
  t_connection = &connection;
  LimitedStream stream(sock, limits_, connection);
  bool ok = true;
  for (int served = 0; served < limits_.keep_alive_requests;) {
    // The first request must start within the request deadline, later ones within the idle
    // timeout; a stopping server closes idle connections within 100 ms.
    registry_->set(&connection, true);  // waiting for a request: may be evicted
    if (!stream.has_buffered()) {
      const auto deadline =
          Clock::now() + (served == 0 ? limits_.request_timeout : limits_.idle_timeout);
      bool readable = false;
      while (!readable && svr_sock_ != INVALID_SOCKET && Clock::now() < deadline) {
        readable = wait_for(sock, POLLIN, milliseconds(poll_ms(deadline - Clock::now())));
      }
      if (!readable) break;
    }
    stream.begin_request();
    connection.refused_status = 0;
    connection.refused_message.clear();
    connection.close_after = connection.responded = false;
    ++served;
    bool closed = false;
    ok = process_request(stream, served >= limits_.keep_alive_requests, closed, nullptr);
    if (connection.refused_status != 0 && !connection.responded) {
      const int status = connection.refused_status;
      write_refusal(sock, status,
                    status == 408   ? "Request Timeout"
                    : status == 413 ? "Payload Too Large"
                                    : "Request Header Fields Too Large",
                    connection.refused_message);
      if (on_refusal) on_refusal(status);
    }
    if (!ok || closed || connection.close_after || connection.refused_status != 0 ||
        svr_sock_ == INVALID_SOCKET) {
      break;
    }
  }
  registry_->remove(&connection);
  t_connection = nullptr;
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ok;
}

}  // namespace squat::server
