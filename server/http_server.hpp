// GuardedServer: cpp-httplib with bounded request heads and no worker spent waiting on a client.
#pragma once

#include <any>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>

#include <httplib.h>

#include "elastic_pool.hpp"

namespace trollproxy::server {

/// Bounds on what a client may send before a worker thread takes its request.
struct HeadLimits {
    std::size_t maxHeaders = 100;         ///< header lines per request; more: 431
    std::size_t maxHeadBytes = 64 * 1024; ///< request line and headers; more: 431
    /// A new connection's first head, or a later head from its first byte, must
    /// arrive within this; otherwise 408 and close.
    std::chrono::milliseconds headTimeout{10'000};
    /// All partly received heads together; past it the one that grows gets 503.
    std::size_t maxBufferedBytes = 64 * 1024 * 1024;
    /// How long a closing connection's unread input is drained, so that the
    /// client reads the answer rather than a reset.
    std::chrono::milliseconds lingerTime{2'000};
    /// Open client connections (all GuardedServers of the process) past which
    /// the ones waiting longest for a head are closed, so that accept() never
    /// runs out of descriptors. 0: the open-file limit less a reserve for the
    /// workers' upstream connections and the ledger.
    std::size_t maxConnections = 0;
};

/// What the handlers may say about the request being served on this thread.
struct RequestScope {
    /// Answer with "Connection: close" and close: e.g. the body was not read.
    bool closeConnection = false;
    /// The embedder's state for this request (e.g. from the pre-routing handler
    /// to the handler); empty at the start of each request.
    std::any user;
};

/// An httplib::Server whose connections wait for their next request head in one
/// epoll thread: a worker runs only once a whole head within `HeadLimits` has
/// arrived, so slow or idle clients hold no worker. The requests of a
/// connection, pipelined or not, are answered in order. The post-routing
/// handler is this class's own; do not replace it.
class GuardedServer : public httplib::Server {
public:
    /// Requests run on an ElasticPool of `workers` (httplib's new_task_queue is
    /// replaced): threads start as requests arrive, up to workers.maxThreads.
    GuardedServer(HeadLimits limits, ElasticPool::Options workers);
    ~GuardedServer() override;

    /// The request being served on this thread; nullptr outside a request.
    static RequestScope* currentRequest();

private:
    struct Connection;
    struct Exchange;
    class HeadCollector;
    class ConnectionStream;

    bool process_and_close_socket(socket_t sock) override;
    /// Serves a connection's requests on a worker while whole heads are buffered.
    void serve(const std::shared_ptr<Connection>& conn);
    /// Runs the request whose head ex.conn holds; sets ex.keepAlive when the
    /// connection can carry another.
    void runRequest(Exchange& ex, ConnectionStream& stream);
    void markResponse(const httplib::Request& req, httplib::Response& res);
    bool stopping() const { return svr_sock_ == INVALID_SOCKET; }

    HeadLimits limits_;
    const ElasticPool::Options workers_;
    std::atomic<HeadCollector*> collector_{nullptr};
    static thread_local Exchange* current_;
};

} // namespace trollproxy::server
