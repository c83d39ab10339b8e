// A GuardedServer client connection: socket, buffered input, and httplib's stream over it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include <sys/types.h>

#include "http_server.hpp"
#include "request_head.hpp"

namespace trollproxy::server {

using SteadyClock = std::chrono::steady_clock;

/// How much a connection reads from its socket at a time.
constexpr std::size_t kReadChunk = 16 * 1024;

/// Waits up to `timeoutMs` for `events` on `fd`; false on a timeout or an error.
bool waitFor(int fd, short events, int timeoutMs);
/// Whether bytes (or an EOF) wait to be read, without blocking.
bool inputPending(int fd);
/// Sends what the socket takes now, ignoring errors.
void sendBestEffort(int fd, const std::string& bytes);

/// One client connection: its socket, the bytes received and not yet consumed,
/// and the scan of the head at their start.
struct GuardedServer::Connection {
    explicit Connection(int s);
    ~Connection();
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    /// Drops the consumed bytes and starts the next request's scan.
    void nextRequest();
    /// Appends what the socket holds now, without waiting: the bytes read, or
    /// -1 when the client closed or the socket failed.
    ssize_t readNow();

    /// Client connections open in the process, against HeadLimits::maxConnections.
    static std::atomic<std::size_t> open;

    const int fd;
    std::string buf;
    std::size_t off = 0;        ///< bytes of buf httplib has read (worker side)
    std::uint64_t consumed = 0; ///< bytes httplib has read over the connection's life
    HeadScan head;
    std::size_t served = 0;
    // Kept by the reader thread while the connection waits there.
    SteadyClock::time_point deadline;
    SteadyClock::time_point since; ///< when it began to wait in the reader
    bool lingering = false;        ///< answered and closing: input is discarded
    std::size_t accounted = 0;
    // Addresses, looked up once: httplib asks for them on every request.
    std::string peerIp, localIp;
    int peerPort = -1, localPort = -1;
};

/// httplib's view of a connection: the buffered bytes first, then the socket.
class GuardedServer::ConnectionStream final : public httplib::Stream {
public:
    ConnectionStream(Connection& c, int readTimeoutMs, int writeTimeoutMs)
        : c_(c), readMs_(readTimeoutMs), writeMs_(writeTimeoutMs) {}

    /// When set, reads at this position of the connection return 0: a request
    /// without Content-Length or Transfer-Encoding has no body (RFC 9112 6.3),
    /// where httplib 0.11 would read one until the client closes.
    std::optional<std::uint64_t> endOfInput;

    bool is_readable() const override;
    bool is_writable() const override;
    ssize_t read(char* ptr, std::size_t size) override;
    ssize_t write(const char* ptr, std::size_t size) override;
    void get_remote_ip_and_port(std::string& ip, int& port) const override;
    void get_local_ip_and_port(std::string& ip, int& port) const override;
    socket_t socket() const override { return c_.fd; }

    /// The next write is an answer's head whose body follows at once: it is
    /// kept and sent with the body, one segment for a small answer.
    void holdNextWrite() { holdNext_ = true; }
    /// Sends a held head (e.g. no body came after all); false on failure.
    bool flush();

private:
    /// Sends `held_` then `ptr`, all of it, within the write timeout.
    bool sendAll(const char* ptr, std::size_t size);

    Connection& c_;
    bool holdNext_ = false;
    std::string held_;
    const int readMs_;
    const int writeMs_;
};

} // namespace trollproxy::server
