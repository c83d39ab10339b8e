// GuardedServer's head collector: one epoll thread holds connections waiting for a head.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "connection.hpp"
#include "elastic_pool.hpp"
#include "http_server.hpp"

namespace trollproxy::server {

/// httplib's task queue, replaced: accepted sockets go to one epoll thread that
/// collects request heads; connections with a whole head go to the workers.
class GuardedServer::HeadCollector final : public httplib::TaskQueue {
public:
    explicit HeadCollector(GuardedServer& server);
    ~HeadCollector() override;

    // httplib's accept loop hands over each socket through this: adopt it now.
    void enqueue(std::function<void()> fn) override { fn(); }

    void shutdown() override;

    /// Waits for the connection's next request head (any thread).
    void watch(std::shared_ptr<Connection> c) { post(std::move(c), false); }
    /// Discards the connection's input until it closes or lingerTime passes.
    void linger(std::shared_ptr<Connection> c);

private:
    struct Posted {
        std::shared_ptr<Connection> conn;
        bool lingering;
    };

    void post(std::shared_ptr<Connection> c, bool lingering);
    void wake();
    /// The reader thread.
    void run();
    void add(std::shared_ptr<Connection> c, bool lingering);
    void remove(Connection& c);
    void account(Connection& c);
    void onReadable(const std::shared_ptr<Connection>& c);
    void refuse(const std::shared_ptr<Connection>& c, const std::string& answer);
    void evict();
    void sweep(SteadyClock::time_point now);

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

} // namespace trollproxy::server
