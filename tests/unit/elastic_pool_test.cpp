// Tests of the server's worker pool: grows on demand up to its maximum, queues beyond it,
// retires idle threads, joins all at shutdown. Bounds on time are generous: no speed is checked.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <iterator>
#include <mutex>
#include <thread>

#include <doctest/doctest.h>

#include "elastic_pool.hpp"

using trollproxy::server::ElasticPool;
using namespace std::chrono_literals;

namespace {

/// Tasks that block until released, counting how many run at once.
class Gate {
public:
    std::function<void()> task() {
        return [this] {
            std::unique_lock lock(mutex_);
            ++running_;
            peak_ = std::max(peak_, running_);
            changed_.notify_all();
            changed_.wait(lock, [this] { return open_; });
            --running_;
            ++done_;
            changed_.notify_all();
        };
    }
    void open() {
        std::lock_guard lock(mutex_);
        open_ = true;
        changed_.notify_all();
    }
    /// Waits up to 10 s for `n` tasks to be running at once.
    bool waitRunning(int n) {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, 10s, [&] { return running_ >= n; });
    }
    bool waitDone(int n) {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, 10s, [&] { return done_ >= n; });
    }
    int running() {
        std::lock_guard lock(mutex_);
        return running_;
    }
    int peak() {
        std::lock_guard lock(mutex_);
        return peak_;
    }

private:
    std::mutex mutex_;
    std::condition_variable changed_;
    bool open_ = false;
    int running_ = 0, peak_ = 0, done_ = 0;
};

/// Polls `pred` for up to `limit`.
template <typename Pred> bool eventually(Pred pred, std::chrono::milliseconds limit = 10s) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > end)
            return false;
        std::this_thread::sleep_for(5ms);
    }
    return true;
}

/// Threads of this process, from /proc.
int processThreads() {
    return static_cast<int>(std::distance(std::filesystem::directory_iterator("/proc/self/task"),
                                          std::filesystem::directory_iterator{}));
}

} // namespace

TEST_CASE("elastic pool: no thread before the first task") {
    int before = processThreads();
    ElasticPool pool({.maxThreads = 64});
    CHECK(pool.stats().threads == 0);
    CHECK(processThreads() == before);
}

TEST_CASE("elastic pool: grows to its maximum, never beyond; the rest wait and run") {
    ElasticPool pool({.maxThreads = 8, .idleTimeout = 60s});
    Gate gate;
    for (int i = 0; i < 20; ++i)
        pool.enqueue(gate.task());
    REQUIRE(gate.waitRunning(8));
    std::this_thread::sleep_for(50ms); // a ninth thread, if one were started, would show
    auto s = pool.stats();
    CHECK(s.threads == 8);
    CHECK(s.queued == 12);
    CHECK(gate.running() == 8);
    gate.open();
    CHECK(gate.waitDone(20));
    s = pool.stats();
    CHECK(gate.peak() == 8);
    CHECK(s.peakThreads == 8);
    CHECK(s.started == 8);
    CHECK(s.queued == 0);
}

TEST_CASE("elastic pool: an idle thread takes the next task instead of a new thread") {
    ElasticPool pool({.maxThreads = 16, .idleTimeout = 60s});
    std::atomic<int> ran{0};
    for (int i = 0; i < 200; ++i) {
        pool.enqueue([&ran] { ++ran; });
        REQUIRE(eventually([&] { return ran == i + 1; }));
        REQUIRE(eventually([&] { return pool.stats().idle == pool.stats().threads; }));
    }
    CHECK(pool.stats().started == 1);
}

TEST_CASE("elastic pool: idle threads retire, and the pool grows again afterwards") {
    ElasticPool pool({.maxThreads = 32, .idleTimeout = 100ms});
    Gate gate;
    for (int i = 0; i < 32; ++i)
        pool.enqueue(gate.task());
    REQUIRE(gate.waitRunning(32));
    int busy = processThreads();
    gate.open();
    REQUIRE(gate.waitDone(32));
    CHECK(eventually([&] { return pool.stats().threads == 0; }));
    CHECK(pool.stats().retired == 32);
    CHECK(pool.stats().trims >= 1);
    // Exited threads are joined: gone from the process, not zombies.
    CHECK(eventually([&] { return processThreads() <= busy - 31; }));

    Gate again;
    for (int i = 0; i < 4; ++i)
        pool.enqueue(again.task());
    CHECK(again.waitRunning(4));
    CHECK(pool.stats().threads == 4);
    again.open();
    CHECK(again.waitDone(4));
}

TEST_CASE("elastic pool: shutdown runs what is queued and joins every thread") {
    int before = processThreads();
    std::atomic<int> ran{0};
    {
        ElasticPool pool({.maxThreads = 4, .idleTimeout = 60s});
        for (int i = 0; i < 100; ++i)
            pool.enqueue([&ran] {
                std::this_thread::sleep_for(1ms);
                ++ran;
            });
        pool.shutdown();
        CHECK(ran == 100);
        CHECK(pool.stats().threads == 0);
        CHECK(processThreads() == before);
        pool.enqueue([&ran] { ++ran; }); // dropped after shutdown
        pool.shutdown();                 // a second call does nothing
    }
    CHECK(ran == 100);
}

TEST_CASE("elastic pool: shutdown wakes idle threads and wins over retirement") {
    int before = processThreads();
    ElasticPool pool({.maxThreads = 8, .idleTimeout = 50ms});
    for (int round = 0; round < 20; ++round) {
        Gate gate;
        for (int i = 0; i < 8; ++i)
            pool.enqueue(gate.task());
        REQUIRE(gate.waitRunning(8));
        gate.open();
        REQUIRE(gate.waitDone(8));
        std::this_thread::sleep_for(std::chrono::milliseconds(round * 5)); // some retire, some not
    }
    pool.shutdown();
    CHECK(pool.stats().threads == 0);
    CHECK(processThreads() == before);
}

TEST_CASE("elastic pool: a task on the default stack can use what the request path needs") {
    // ~150 KiB of stack, as a 1,000-deep JSON request did in a debug build; 1 MiB by default.
    ElasticPool pool({.maxThreads = 1});
    std::atomic<bool> ok{false};
    pool.enqueue([&ok] {
        volatile char big[150 * 1024];
        for (std::size_t i = 0; i < sizeof big; i += 4096)
            big[i] = 1;
        ok = big[0] == 1;
    });
    pool.shutdown();
    CHECK(ok);
}
