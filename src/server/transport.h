// The connection layer under cpp-httplib. Debian's cpp-httplib 0.11 bounds neither the time a
// client may take to send its request (its read timeout restarts with every byte) nor the
// number of header lines, applies its payload limit to neither chunked nor compressed bodies,
// and serves connections from a fixed pool that slow clients can fill. BoundedServer keeps
// httplib's request parsing and routing but serves each connection on its own thread (up to
// max_connections), reads through a stream that enforces a deadline for the whole request, a
// bound on header lines and bytes and on the request's bytes on the wire, and, when the cap is
// reached, evicts the connection that has waited longest for its request's bytes, so a flood of
// slow clients cannot keep /health from being answered.
#pragma once

#include <httplib.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace squat::server {

struct TransportLimits {
  std::chrono::milliseconds request_timeout{10000};  // a whole request (headers and body) arrives
  std::chrono::milliseconds idle_timeout{5000};      // keep-alive wait for the next request
  std::chrono::milliseconds write_timeout{10000};    // one blocked write to the client
  int max_header_lines = 100;                        // request line included
  std::size_t max_header_bytes = std::size_t(32) << 10;
  std::size_t max_request_bytes = std::size_t(2) << 20;  // headers and body as sent (framing too)
  int max_connections = 256;                             // connection threads
  int keep_alive_requests = 100;                         // requests served on one connection
};

// What the transport knows about the connection the calling thread serves: every connection
// is served by one thread from accept to close, so handlers reach it with current_connection().
struct Connection {
  int fd = -1;
  int refused_status = 0;  // the stream refused the request: 408, 413 or 431
  std::string refused_message;
  bool close_after = false;  // the request's body was left unread: close after the response
  bool responded = false;    // a response's status line was written
};

// nullptr off connection threads.
Connection* current_connection();

// Whether the current connection's client has closed or reset it (never blocks). Data the
// client sent meanwhile (a pipelined request) does not count as gone.
bool client_gone();

class BoundedServer : public httplib::Server {
 public:
  explicit BoundedServer(TransportLimits limits);
  ~BoundedServer() override;

  // Waits up to `limit` until no connection is being answered (responses written out).
  void wait_answered(std::chrono::milliseconds limit);
  // httplib's stop() (which also cuts off streams still writing), and connections still waiting for
  // their request close at once.
  void stop_serving();
  // The current connection has sent its request's headers and is being answered: no longer a
  // candidate for eviction.
  void mark_handling();
  const TransportLimits& limits() const { return limits_; }
  // Called with the status of a response written by the transport itself (408/413/431 before
  // httplib parsed a request, 503 when every connection is busy), for the metrics.
  std::function<void(int status)> on_refusal;

  struct Registry;

 private:
  bool process_and_close_socket(socket_t sock) override;

  TransportLimits limits_;
  std::shared_ptr<Registry> registry_;
};

}  // namespace squat::server
