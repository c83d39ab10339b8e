// The SQLite ledger's writer queue: bounded waits, and the lock goes to waiters in arrival order.
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "ledger/sqlite_db.hpp"

using trollproxy::internal::FairTimedMutex;
using namespace std::chrono_literals;

TEST_CASE("a wait on a held lock gives up after its time") {
    FairTimedMutex m;
    REQUIRE(m.lockFor(10ms));
    auto start = std::chrono::steady_clock::now();
    std::thread t([&] { CHECK_FALSE(m.lockFor(50ms)); });
    t.join();
    CHECK(std::chrono::steady_clock::now() - start >= 50ms);
    m.unlock();
    // The timed-out waiter left the queue: the lock is free again.
    CHECK(m.lockFor(0ms));
    m.unlock();
}

TEST_CASE(
    "waiters get the lock in the order they came, even against a thread that re-locks at once") {
    FairTimedMutex m;
    REQUIRE(m.lockFor(10ms));
    std::mutex orderMutex;
    std::vector<int> order;
    std::vector<std::thread> waiters;
    for (int i = 0; i < 8; ++i) {
        waiters.emplace_back([&, i] {
            REQUIRE(m.lockFor(5000ms));
            {
                std::lock_guard g(orderMutex);
                order.push_back(i);
            }
            m.unlock();
        });
        std::this_thread::sleep_for(20ms); // so arrival order is i
    }
    // A greedy thread that unlocks and re-locks in a loop must not starve them.
    m.unlock();
    std::atomic<bool> stop{false};
    std::thread greedy([&] {
        while (!stop) {
            if (m.lockFor(5000ms))
                m.unlock();
        }
    });
    for (auto& w : waiters)
        w.join();
    stop = true;
    greedy.join();
    REQUIRE(order.size() == 8);
    for (int i = 0; i < 8; ++i)
        CHECK(order[i] == i);
}
