// GuardedServer's head collector: one epoll thread holds connections waiting for a head.
#include "head_collector.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <utility>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

namespace trollproxy::server {

namespace {

constexpr auto kSweepEvery = std::chrono::milliseconds(100);

} // namespace

GuardedServer::HeadCollector::HeadCollector(GuardedServer& server)
    : server_(server), limits_(server.limits_), workers_(server.workers_),
      epoll_(::epoll_create1(EPOLL_CLOEXEC)), wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = wake_;
    ::epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_, &ev);
    reader_ = std::thread([this] { run(); });
    server_.collector_ = this;
}

GuardedServer::HeadCollector::~HeadCollector() {
    ::close(epoll_);
    ::close(wake_);
}

void GuardedServer::HeadCollector::shutdown() {
    server_.collector_ = nullptr;
    {
        std::lock_guard lock(mutex_);
        stopped_ = true;
    }
    wake();
    reader_.join();      // closes the connections waiting for a head
    workers_.shutdown(); // requests in flight finish; their connections close
}

void GuardedServer::HeadCollector::linger(std::shared_ptr<Connection> c) {
    ::shutdown(c->fd, SHUT_WR);
    post(std::move(c), true);
}

void GuardedServer::HeadCollector::post(std::shared_ptr<Connection> c, bool lingering) {
    {
        std::lock_guard lock(mutex_);
        if (stopped_)
            return; // the connection closes with its last reference
        inbox_.push_back({std::move(c), lingering});
    }
    wake();
}

void GuardedServer::HeadCollector::wake() {
    std::uint64_t one = 1;
    (void)!::write(wake_, &one, sizeof one);
}

void GuardedServer::HeadCollector::run() {
    std::vector<epoll_event> events(256);
    auto nextSweep = SteadyClock::now() + kSweepEvery;
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
        if (Connection::open > limits_.maxConnections)
            evict();
        if (auto now = SteadyClock::now(); now >= nextSweep) {
            sweep(now);
            nextSweep = now + kSweepEvery;
        }
    }
}

void GuardedServer::HeadCollector::add(std::shared_ptr<Connection> c, bool lingering) {
    auto now = SteadyClock::now();
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

void GuardedServer::HeadCollector::remove(Connection& c) {
    ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
    buffered_ -= c.accounted;
    c.accounted = 0;
    waiting_.erase(c.fd); // may drop the last reference: close
}

void GuardedServer::HeadCollector::account(Connection& c) {
    std::size_t now = c.lingering ? 0 : c.buf.size();
    buffered_ = buffered_ - c.accounted + now;
    c.accounted = now;
}

void GuardedServer::HeadCollector::onReadable(const std::shared_ptr<Connection>& c) {
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
            c->deadline = SteadyClock::now() + limits_.headTimeout; // a new head begins
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
void GuardedServer::HeadCollector::refuse(const std::shared_ptr<Connection>& c,
                                          const std::string& answer) {
    sendBestEffort(c->fd, answer);
    ::shutdown(c->fd, SHUT_WR);
    remove(*c);
    add(c, true);
}

// Out of descriptors soon: closes the connections that have waited longest
// (closing ones first), down to 95% of the bound.
void GuardedServer::HeadCollector::evict() {
    std::vector<std::shared_ptr<Connection>> order;
    for (auto& [fd, c] : waiting_)
        order.push_back(c);
    std::size_t excess = Connection::open - limits_.maxConnections * 95 / 100;
    std::size_t n = std::min(excess, order.size());
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n), order.end(),
                      [](const auto& a, const auto& b) {
                          return a->lingering != b->lingering ? a->lingering : a->since < b->since;
                      });
    for (std::size_t i = 0; i < n; ++i)
        remove(*order[i]);
}

void GuardedServer::HeadCollector::sweep(SteadyClock::time_point now) {
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

} // namespace trollproxy::server
