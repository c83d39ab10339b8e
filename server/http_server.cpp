// GuardedServer: request heads read by one epoll thread within limits, requests run by workers.
#include "http_server.hpp"

#include <cstdint>
#include <memory>

#include <poll.h>
#include <sys/resource.h>

#include "connection.hpp"
#include "head_collector.hpp"
#include "request_head.hpp"

namespace trollproxy::server {

namespace {

constexpr int kNextRequestWaitMs = 2;

} // namespace

/// The request being served on a worker thread.
struct GuardedServer::Exchange {
    RequestScope scope;
    Connection* conn = nullptr;
    ConnectionStream* stream = nullptr;
    std::uint64_t start = 0; ///< conn->consumed when the request began
    bool responded = false;
    bool keepAlive = false; ///< the connection can carry another request
};

thread_local GuardedServer::Exchange* GuardedServer::current_ = nullptr;

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
    new_task_queue = [this] { return new HeadCollector(*this); };
    set_post_routing_handler(
        [this](const httplib::Request& req, httplib::Response& res) { markResponse(req, res); });
}

GuardedServer::~GuardedServer() = default;

RequestScope* GuardedServer::currentRequest() {
    return current_ ? &current_->scope : nullptr;
}

bool GuardedServer::process_and_close_socket(socket_t sock) {
    auto conn = std::make_shared<Connection>(sock);
    HeadCollector* collector = collector_.load();
    if (!collector)
        return false; // closes
    collector->watch(std::move(conn));
    return true;
}

// Runs before the answer's head is written: a connection whose request body was
// not read to its end (refused early, or an error) cannot carry another request.
void GuardedServer::markResponse(const httplib::Request& req, httplib::Response& res) {
    Exchange* ex = current_;
    if (!ex)
        return;
    ex->responded = true;
    // A whole body is written right after the head: one send for both.
    if (!res.body.empty() && !res.content_provider_ && req.method != "HEAD")
        ex->stream->holdNextWrite();
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

void GuardedServer::runRequest(Exchange& ex, ConnectionStream& stream) {
    Connection& c = *ex.conn;
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
    ok = stream.flush() && ok;
    ex.keepAlive = ok && !last && !clientClosed && ex.responded && !ex.scope.closeConnection;
}

void GuardedServer::serve(const std::shared_ptr<Connection>& conn) {
    Connection& c = *conn;
    ConnectionStream stream(
        c, static_cast<int>(read_timeout_sec_ * 1000 + read_timeout_usec_ / 1000),
        static_cast<int>(write_timeout_sec_ * 1000 + write_timeout_usec_ / 1000));
    for (;;) {
        Exchange ex;
        ex.conn = &c;
        ex.stream = &stream;
        runRequest(ex, stream);
        HeadCollector* collector = collector_.load();
        if (!collector)
            return;
        if (!ex.keepAlive) {
            if (ex.scope.closeConnection || inputPending(c.fd))
                collector->linger(conn);
            return; // otherwise closes with its last reference
        }
        c.nextRequest();
        HeadVerdict v = scanHead(c.buf, c.head, limits_);
        // A client that sends its next request at once keeps its worker, one
        // thread wake-up per request instead of two; anything slower waits in
        // the reader. Bounded: kNextRequestWaitMs of a worker per request.
        if (v == HeadVerdict::Incomplete && waitFor(c.fd, POLLIN, kNextRequestWaitMs)) {
            ssize_t n = c.readNow();
            if (n < 0)
                return; // the client closed
            if (n > 0)
                v = scanHead(c.buf, c.head, limits_);
        }
        if (v == HeadVerdict::Complete)
            continue; // pipelined: answered in order, on this worker
        if (v == HeadVerdict::Incomplete) {
            collector->watch(conn);
        } else {
            sendBestEffort(c.fd, refusalFor(v, limits_));
            collector->linger(conn);
        }
        return;
    }
}

} // namespace trollproxy::server
