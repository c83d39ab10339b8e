// GuardedServer: request heads read by one epoll thread within limits, requests run by workers.
#include "http_server.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

namespace trollproxy::server {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kReadChunk = 16 * 1024;
constexpr auto kSweepEvery = std::chrono::milliseconds(100);
constexpr int kNextRequestWaitMs = 2;

// Client connections open in the process, against HeadLimits::maxConnections.
std::atomic<std::size_t> openConnections{0};

enum class HeadVerdict {
    Incomplete,
    Complete,
    TooLarge,
    TooManyHeaders,
    BadFraming,
    UnknownEncoding
};

/// What the scan of one request head found so far; reset for each request.
struct HeadScan {
    std::size_t scanned = 0; ///< bytes of the buffer split into whole lines
    std::size_t headerLines = 0;
    bool requestLine = false;
    std::size_t length = 0; ///< request line to blank line, once complete
    std::optional<std::uint64_t> contentLength;
    bool badLength = false; ///< unparseable, or two different values
    std::string transferEncoding;

    bool hasBody() const { return contentLength || !transferEncoding.empty(); }
};

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

// Notes the framing headers as httplib will read them: the name is exactly what
// precedes the first ':' (no trimming), and lines not ending in CRLF are skipped.
void noteHeader(HeadScan& h, std::string_view line) {
    if (line.empty() || line.back() != '\r')
        return;
    auto colon = line.find(':');
    if (colon == std::string_view::npos)
        return;
    std::string_view name = line.substr(0, colon);
    std::string_view value = trim(line.substr(colon + 1));
    if (iequals(name, "content-length")) {
        bool digits = !value.empty() && value.size() <= 18 &&
                      value.find_first_not_of("0123456789") == std::string_view::npos;
        std::uint64_t n = digits ? std::stoull(std::string(value)) : 0;
        if (!digits || (h.contentLength && *h.contentLength != n))
            h.badLength = true;
        h.contentLength = n;
    } else if (iequals(name, "transfer-encoding") && !value.empty()) {
        h.transferEncoding += (h.transferEncoding.empty() ? "" : ",") + std::string(value);
    }
}

// Scans `buf` from where the last call stopped; counts lines and bytes as they
// arrive, so a head sent a byte at a time costs no rescans.
HeadVerdict scanHead(std::string& buf, HeadScan& h, const HeadLimits& limits) {
    if (!h.requestLine && h.scanned == 0) {
        // Empty lines before a request line are ignored (RFC 9112 section 2.2).
        auto first = buf.find_first_not_of("\r\n");
        buf.erase(0, first == std::string::npos ? buf.size() : first);
    }
    for (;;) {
        auto nl = buf.find('\n', h.scanned);
        if (nl == std::string::npos)
            return buf.size() > limits.maxHeadBytes ? HeadVerdict::TooLarge
                                                    : HeadVerdict::Incomplete;
        std::string_view line(buf.data() + h.scanned, nl - h.scanned);
        h.scanned = nl + 1;
        if (h.scanned > limits.maxHeadBytes)
            return HeadVerdict::TooLarge;
        if (!h.requestLine) {
            h.requestLine = true;
        } else if (line == "\r") {
            h.length = h.scanned;
            if (h.badLength || (h.contentLength && !h.transferEncoding.empty()))
                return HeadVerdict::BadFraming;
            if (!h.transferEncoding.empty() && !iequals(h.transferEncoding, "chunked"))
                return HeadVerdict::UnknownEncoding;
            return HeadVerdict::Complete;
        } else if (++h.headerLines > limits.maxHeaders) {
            return HeadVerdict::TooManyHeaders;
        } else {
            noteHeader(h, line);
        }
    }
}

// An answer written straight to the socket, for requests httplib never sees.
std::string refusal(int status, const char* reason, const std::string& message) {
    std::string body = "{\"error\":{\"message\":\"" + message + "\",\"type\":\"" +
                       (status >= 500 ? "server_error" : "invalid_request_error") +
                       "\",\"param\":null,\"code\":null}}";
    return "HTTP/1.1 " + std::to_string(status) + " " + reason +
           "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\nConnection: close\r\n\r\n" + body;
}

std::string refusalFor(HeadVerdict v, const HeadLimits& limits) {
    switch (v) {
    case HeadVerdict::TooLarge:
        return refusal(431, "Request Header Fields Too Large",
                       "the request line and headers are larger than " +
                           std::to_string(limits.maxHeadBytes) + " bytes");
    case HeadVerdict::TooManyHeaders:
        return refusal(431, "Request Header Fields Too Large",
                       "more than " + std::to_string(limits.maxHeaders) + " header fields");
    case HeadVerdict::BadFraming:
        return refusal(400, "Bad Request",
                       "invalid or conflicting Content-Length / Transfer-Encoding");
    case HeadVerdict::UnknownEncoding:
        return refusal(501, "Not Implemented", "only Transfer-Encoding: chunked is supported");
    default:
        return refusal(400, "Bad Request", "bad request");
    }
}

bool waitFor(int fd, short events, int timeoutMs) {
    pollfd p{fd, events, 0};
    int r;
    do {
        r = ::poll(&p, 1, timeoutMs);
    } while (r < 0 && errno == EINTR);
    return r > 0;
}

// Whether bytes (or an EOF) wait to be read, without blocking.
bool inputPending(int fd) {
    char b;
    ssize_t n = ::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0;
}

void sendBestEffort(int fd, const std::string& bytes) {
    (void)::send(fd, bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
}

void addressOf(int fd, bool peer, std::string& ip, int& port) {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    int r = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                 : ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    if (r != 0)
        return;
    char text[INET6_ADDRSTRLEN] = "";
    if (addr.ss_family == AF_INET) {
        auto* a = reinterpret_cast<sockaddr_in*>(&addr);
        ::inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
        port = ntohs(a->sin_port);
    } else if (addr.ss_family == AF_INET6) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
        ::inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
        port = ntohs(a->sin6_port);
    }
    ip = text;
}

} // namespace

/// One client connection: its socket, the bytes received and not yet consumed,
/// and the scan of the head at their start.
struct GuardedServer::Connection {
    explicit Connection(int s) : fd(s) { ++openConnections; }
    ~Connection() {
        ::close(fd);
        --openConnections;
    }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    /// Drops the consumed bytes and starts the next request's scan.
    void nextRequest() {
        buf.erase(0, off);
        off = 0;
        head = HeadScan{};
        if (buf.empty())
            std::string().swap(buf); // idle connections keep no read buffer
    }

    const int fd;
    std::string buf;
    std::size_t off = 0;        ///< bytes of buf httplib has read (worker side)
    std::uint64_t consumed = 0; ///< bytes httplib has read over the connection's life
    HeadScan head;
    std::size_t served = 0;
    // Kept by the reader thread while the connection waits there.
    Clock::time_point deadline;
    Clock::time_point since; ///< when it began to wait in the reader
    bool lingering = false;  ///< answered and closing: input is discarded
    std::size_t accounted = 0;
};

/// The request being served on a worker thread.
struct GuardedServer::Exchange {
    RequestScope scope;
    Connection* conn = nullptr;
    std::uint64_t start = 0; ///< conn->consumed when the request began
    bool responded = false;
};

thread_local GuardedServer::Exchange* GuardedServer::current_ = nullptr;

/// httplib's view of a connection: the buffered bytes first, then the socket.
class GuardedServer::ConnectionStream final : public httplib::Stream {
public:
    ConnectionStream(Connection& c, int readTimeoutMs, int writeTimeoutMs)
        : c_(c), readMs_(readTimeoutMs), writeMs_(writeTimeoutMs) {}

    /// When set, reads at this position of the connection return 0: a request
    /// without Content-Length or Transfer-Encoding has no body (RFC 9112 6.3),
    /// where httplib 0.11 would read one until the client closes.
    std::optional<std::uint64_t> endOfInput;

    bool is_readable() const override {
        return c_.off < c_.buf.size() || waitFor(c_.fd, POLLIN, readMs_);
    }
    bool is_writable() const override {
        if (!waitFor(c_.fd, POLLOUT, writeMs_))
            return false;
        // Gone when the peer closed: readable with nothing to read.
        pollfd p{c_.fd, POLLIN, 0};
        return ::poll(&p, 1, 0) == 0 || inputPending(c_.fd);
    }
    ssize_t read(char* ptr, std::size_t size) override {
        if (endOfInput && c_.consumed >= *endOfInput)
            return 0;
        if (c_.off == c_.buf.size()) {
            c_.buf.clear();
            c_.off = 0;
            if (!waitFor(c_.fd, POLLIN, readMs_))
                return -1;
            c_.buf.resize(kReadChunk);
            ssize_t n;
            do {
                n = ::recv(c_.fd, c_.buf.data(), kReadChunk, 0);
            } while (n < 0 && errno == EINTR);
            c_.buf.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
            if (n <= 0)
                return n;
        }
        std::size_t n = std::min(size, c_.buf.size() - c_.off);
        if (endOfInput)
            n = static_cast<std::size_t>(std::min<std::uint64_t>(n, *endOfInput - c_.consumed));
        std::memcpy(ptr, c_.buf.data() + c_.off, n);
        c_.off += n;
        c_.consumed += n;
        return static_cast<ssize_t>(n);
    }
    ssize_t write(const char* ptr, std::size_t size) override {
        if (!waitFor(c_.fd, POLLOUT, writeMs_))
            return -1;
        ssize_t n;
        do {
            n = ::send(c_.fd, ptr, size, MSG_NOSIGNAL);
        } while (n < 0 && errno == EINTR);
        return n;
    }
    void get_remote_ip_and_port(std::string& ip, int& port) const override {
        addressOf(c_.fd, true, ip, port);
    }
    void get_local_ip_and_port(std::string& ip, int& port) const override {
        addressOf(c_.fd, false, ip, port);
    }
    socket_t socket() const override { return c_.fd; }

private:
    Connection& c_;
    const int readMs_;
    const int writeMs_;
};

/// httplib's task queue, replaced: accepted sockets go to one epoll thread that
/// collects request heads; connections with a whole head go to the workers.
class GuardedServer::Engine final : public httplib::TaskQueue {
public:
    explicit Engine(GuardedServer& server)
        : server_(server), limits_(server.limits_), workers_(server.workers_),
          epoll_(::epoll_create1(EPOLL_CLOEXEC)), wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = wake_;
        ::epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_, &ev);
        reader_ = std::thread([this] { run(); });
        server_.engine_ = this;
    }
    ~Engine() override {
        ::close(epoll_);
        ::close(wake_);
    }

    // httplib's accept loop hands over each socket through this: adopt it now.
    void enqueue(std::function<void()> fn) override { fn(); }

    void shutdown() override {
        server_.engine_ = nullptr;
        {
            std::lock_guard lock(mutex_);
            stopped_ = true;
        }
        wake();
        reader_.join();      // closes the connections waiting for a head
        workers_.shutdown(); // requests in flight finish; their connections close
    }

    /// Waits for the connection's next request head (any thread).
    void watch(std::shared_ptr<Connection> c) { post(std::move(c), false); }
    /// Discards the connection's input until it closes or lingerTime passes.
    void linger(std::shared_ptr<Connection> c) {
        ::shutdown(c->fd, SHUT_WR);
        post(std::move(c), true);
    }

private:
    void post(std::shared_ptr<Connection> c, bool lingering) {
        {
            std::lock_guard lock(mutex_);
            if (stopped_)
                return; // the connection closes with its last reference
            inbox_.push_back({std::move(c), lingering});
        }
        wake();
    }
    void wake() {
        std::uint64_t one = 1;
        (void)!::write(wake_, &one, sizeof one);
    }

    void run() {
        std::vector<epoll_event> events(256);
        auto nextSweep = Clock::now() + kSweepEvery;
        for (;;) {
            int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), 100);
            for (int i = 0; i < n; ++i) {
                int fd = events[static_cast<std::size_t>(i)].data.fd;
                if (fd == wake_) {
                    std::uint64_t count;
                    (void)!::read(wake_, &count, sizeof count);
                    continue;
                }
                auto it = waiting_.find(fd);
                if (it != waiting_.end())
                    onReadable(std::shared_ptr<Connection>(it->second));
            }
            std::vector<Posted> posted;
            bool stop;
            {
                std::lock_guard lock(mutex_);
                posted.swap(inbox_);
                stop = stopped_;
            }
            if (stop) {
                waiting_.clear();
                return;
            }
            for (auto& p : posted)
                add(std::move(p.conn), p.lingering);
            if (openConnections > limits_.maxConnections)
                evict();
            if (auto now = Clock::now(); now >= nextSweep) {
                sweep(now);
                nextSweep = now + kSweepEvery;
            }
        }
    }

    void add(std::shared_ptr<Connection> c, bool lingering) {
        auto now = Clock::now();
        c->since = now;
        c->lingering = lingering;
        if (lingering) {
            c->buf.clear();
            c->deadline = now + limits_.lingerTime;
        } else if (c->served == 0 || !c->buf.empty()) {
            c->deadline = now + limits_.headTimeout;
        } else {
            c->deadline = now + std::chrono::seconds(server_.keep_alive_timeout_sec_);
        }
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.fd = c->fd;
        if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, c->fd, &ev) != 0)
            return; // closes
        account(*c);
        waiting_.emplace(c->fd, std::move(c));
    }

    void remove(Connection& c) {
        ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
        buffered_ -= c.accounted;
        c.accounted = 0;
        waiting_.erase(c.fd); // may drop the last reference: close
    }

    void account(Connection& c) {
        std::size_t now = c.lingering ? 0 : c.buf.size();
        buffered_ = buffered_ - c.accounted + now;
        c.accounted = now;
    }

    void onReadable(const std::shared_ptr<Connection>& c) {
        char chunk[kReadChunk];
        // A bounded turn per wakeup, so that one fast sender cannot hold the thread.
        for (int turn = 0; turn < 64; ++turn) {
            ssize_t n = ::recv(c->fd, chunk, sizeof chunk, MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            if (n <= 0) {
                remove(*c); // the client closed or the socket failed
                return;
            }
            if (c->lingering)
                continue; // discarded
            if (c->served > 0 && c->buf.empty())
                c->deadline = Clock::now() + limits_.headTimeout; // a new head begins
            c->buf.append(chunk, static_cast<std::size_t>(n));
            HeadVerdict v = scanHead(c->buf, c->head, limits_);
            if (v == HeadVerdict::Complete) {
                remove(*c);
                workers_.enqueue([server = &server_, c] { server->serve(c); });
                return;
            }
            if (v != HeadVerdict::Incomplete) {
                refuse(c, refusalFor(v, limits_));
                return;
            }
            if (static_cast<std::size_t>(n) < sizeof chunk)
                break;
        }
        if (c->lingering)
            return;
        account(*c);
        if (buffered_ > limits_.maxBufferedBytes)
            refuse(c, refusal(503, "Service Unavailable", "too many request heads in progress"));
    }

    // Answers and keeps draining the input for lingerTime, so that the client
    // reads the answer instead of a reset.
    void refuse(const std::shared_ptr<Connection>& c, const std::string& answer) {
        sendBestEffort(c->fd, answer);
        ::shutdown(c->fd, SHUT_WR);
        remove(*c);
        add(c, true);
    }

    // Out of descriptors soon: closes the connections that have waited longest
    // (closing ones first), down to 95% of the bound.
    void evict() {
        std::vector<std::shared_ptr<Connection>> order;
        for (auto& [fd, c] : waiting_)
            order.push_back(c);
        std::size_t excess = openConnections - limits_.maxConnections * 95 / 100;
        std::size_t n = std::min(excess, order.size());
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n),
                          order.end(), [](const auto& a, const auto& b) {
                              return a->lingering != b->lingering ? a->lingering
                                                                  : a->since < b->since;
                          });
        for (std::size_t i = 0; i < n; ++i)
            remove(*order[i]);
    }

    void sweep(Clock::time_point now) {
        std::vector<std::shared_ptr<Connection>> expired;
        for (auto& [fd, c] : waiting_) {
            if (c->deadline <= now)
                expired.push_back(c);
        }
        for (auto& c : expired) {
            if (c->lingering || c->buf.empty()) {
                remove(*c);
            } else {
                refuse(c, refusal(408, "Request Timeout",
                                  "the request head did not arrive within " +
                                      std::to_string(limits_.headTimeout.count()) + " ms"));
            }
        }
    }

    struct Posted {
        std::shared_ptr<Connection> conn;
        bool lingering;
    };

    GuardedServer& server_;
    const HeadLimits& limits_;
    ElasticPool workers_;
    const int epoll_;
    const int wake_;
    std::thread reader_;
    std::mutex mutex_;
    std::vector<Posted> inbox_;
    bool stopped_ = false;
    // The reader thread's own.
    std::unordered_map<int, std::shared_ptr<Connection>> waiting_;
    std::size_t buffered_ = 0;
};

GuardedServer::GuardedServer(HeadLimits limits, ElasticPool::Options workers)
    : limits_(limits), workers_(workers) {
    if (limits_.maxConnections == 0) {
        // Up to ~3 upstream sockets and a ledger connection per worker
        // (docs/reliability.md, "Descriptors"); the rest is for the ledger,
        // the journal and the listeners.
        rlimit files{};
        ::getrlimit(RLIMIT_NOFILE, &files);
        std::size_t reserve = 4 * workers_.maxThreads + 256;
        limits_.maxConnections = files.rlim_cur > reserve + 64 ? files.rlim_cur - reserve : 64;
    }
    new_task_queue = [this] { return new Engine(*this); };
    set_post_routing_handler(
        [this](const httplib::Request&, httplib::Response& res) { markResponse(res); });
}

GuardedServer::~GuardedServer() = default;

RequestScope* GuardedServer::currentRequest() {
    return current_ ? &current_->scope : nullptr;
}

bool GuardedServer::process_and_close_socket(socket_t sock) {
    auto conn = std::make_shared<Connection>(sock);
    Engine* engine = engine_.load();
    if (!engine)
        return false; // closes
    engine->watch(std::move(conn));
    return true;
}

// Runs before the answer's head is written: a connection whose request body was
// not read to its end (refused early, or an error) cannot carry another request.
void GuardedServer::markResponse(httplib::Response& res) {
    Exchange* ex = current_;
    if (!ex)
        return;
    ex->responded = true;
    const Connection& c = *ex->conn;
    std::uint64_t read = c.consumed - ex->start;
    bool unread = read < c.head.length ||
                  (c.head.contentLength && read != c.head.length + *c.head.contentLength) ||
                  (!c.head.transferEncoding.empty() && res.status >= 400);
    if (unread)
        ex->scope.closeConnection = true;
    if (ex->scope.closeConnection) {
        res.headers.erase("Keep-Alive");
        res.headers.erase("Connection");
        res.set_header("Connection", "close");
    }
}

void GuardedServer::serve(const std::shared_ptr<Connection>& conn) {
    Connection& c = *conn;
    ConnectionStream stream(
        c, static_cast<int>(read_timeout_sec_ * 1000 + read_timeout_usec_ / 1000),
        static_cast<int>(write_timeout_sec_ * 1000 + write_timeout_usec_ / 1000));
    for (;;) {
        Exchange ex;
        ex.conn = &c;
        ex.start = c.consumed;
        stream.endOfInput.reset();
        if (!c.head.hasBody())
            stream.endOfInput = c.consumed + c.head.length;
        bool last = stopping() || ++c.served >= keep_alive_max_count_;
        bool clientClosed = false;
        current_ = &ex;
        bool ok = false;
        try {
            ok = process_request(stream, last, clientClosed, nullptr);
        } catch (...) {
            // Thrown outside httplib's own catch (e.g. by the 100-continue
            // handler): the exchange is in an unknown state, so close.
            ex.scope.closeConnection = true;
        }
        current_ = nullptr;

        Engine* engine = engine_.load();
        if (!engine)
            return;
        if (!ok || last || clientClosed || !ex.responded || ex.scope.closeConnection) {
            if (ex.scope.closeConnection || inputPending(c.fd))
                engine->linger(conn);
            return; // otherwise closes with its last reference
        }
        c.nextRequest();
        HeadVerdict v = scanHead(c.buf, c.head, limits_);
        // A client that sends its next request at once keeps its worker, one
        // thread wake-up per request instead of two; anything slower waits in
        // the reader. Bounded: kNextRequestWaitMs of a worker per request.
        if (v == HeadVerdict::Incomplete && waitFor(c.fd, POLLIN, kNextRequestWaitMs)) {
            char chunk[kReadChunk];
            ssize_t n = ::recv(c.fd, chunk, sizeof chunk, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                return; // the client closed
            if (n > 0) {
                c.buf.append(chunk, static_cast<std::size_t>(n));
                v = scanHead(c.buf, c.head, limits_);
            }
        }
        if (v == HeadVerdict::Complete)
            continue; // pipelined: answered in order, on this worker
        if (v == HeadVerdict::Incomplete) {
            engine->watch(conn);
        } else {
            sendBestEffort(c.fd, refusalFor(v, limits_));
            engine->linger(conn);
        }
        return;
    }
}

} // namespace trollproxy::server
