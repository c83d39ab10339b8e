// GroupCommit: many threads' writes share transactions, each keeps its own outcome.
#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <sqlite3.h>

#include "ledger/sqlite_db.hpp"
#include "ledger/sqlite_group_commit.hpp"

using namespace trollproxy::internal;
using namespace std::chrono_literals;

namespace {

struct TempDb {
    std::filesystem::path path;
    TempDb() {
        char tmpl[] = "/tmp/trollproxy-gc-XXXXXX";
        path = std::filesystem::path(mkdtemp(tmpl)) / "gc.db";
    }
    ~TempDb() { std::filesystem::remove_all(path.parent_path()); }
};

std::int64_t count(ConnectionPool& pool, const char* where) {
    auto c = pool.take(nullptr);
    std::string sql = std::string("SELECT count(*) FROM t WHERE ") + where;
    sqlite3_stmt* s = nullptr;
    REQUIRE(sqlite3_prepare_v2((*c)->handle(), sql.c_str(), -1, &s, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(s) == SQLITE_ROW);
    std::int64_t n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
}

bool insert(Connection& c, std::int64_t v) {
    Stmt s = c.prepare("INSERT INTO t (v) VALUES (?)");
    s.bind(1, v);
    return s.step() == SQLITE_DONE;
}

} // namespace

TEST_CASE(
    "ops from many threads all commit, a failed op rolls back alone, and batches run others' ops") {
    TempDb db;
    ConnectionPool pool(db.path.string(), 3000);
    REQUIRE((*pool.take(nullptr))->exec("CREATE TABLE t (v INTEGER UNIQUE)") == SQLITE_OK);
    GroupCommit gc(pool, 3000ms);

    constexpr int kThreads = 64, kEach = 20;
    std::atomic<int> okCount{0}, failCount{0}, ranElsewhere{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < kEach; ++i) {
                std::int64_t v = t * kEach + i;
                auto caller = std::this_thread::get_id();
                // Every 5th op writes its row and then fails: its row must not stay.
                bool fail = i % 5 == 0;
                bool ok = gc.run([&](Connection& c) {
                    if (std::this_thread::get_id() != caller)
                        ++ranElsewhere;
                    if (!insert(c, v))
                        return false;
                    return !fail;
                });
                (ok ? okCount : failCount)++;
                CHECK(ok == !fail);
            }
        });
    }
    for (auto& th : threads)
        th.join();
    CHECK(okCount == kThreads * kEach * 4 / 5);
    CHECK(failCount == kThreads * kEach / 5);
    CHECK(count(pool, "1") == okCount);
    CHECK(count(pool, "v % 20 = 0") == 0);
    // With 64 threads queueing on one writer, leaders ran other threads' ops.
    CHECK(ranElsewhere > 0);
}

TEST_CASE("a statement error fails its own op; the batch's other ops commit") {
    TempDb db;
    ConnectionPool pool(db.path.string(), 3000);
    REQUIRE((*pool.take(nullptr))->exec("CREATE TABLE t (v INTEGER UNIQUE)") == SQLITE_OK);
    GroupCommit gc(pool, 3000ms);
    CHECK(gc.run([](Connection& c) { return insert(c, 1); }));
    // A duplicate violates UNIQUE: the op sees the error and reports it.
    CHECK_FALSE(gc.run([](Connection& c) { return insert(c, 2) && insert(c, 1); }));
    CHECK(gc.run([](Connection& c) { return insert(c, 3); }));
    CHECK(count(pool, "1") == 2);
    CHECK(count(pool, "v = 2") == 0);
}

TEST_CASE("an op still queued when its wait runs out never runs and reports failure") {
    TempDb db;
    ConnectionPool pool(db.path.string(), 3000);
    REQUIRE((*pool.take(nullptr))->exec("CREATE TABLE t (v INTEGER UNIQUE)") == SQLITE_OK);
    GroupCommit gc(pool, 100ms);
    std::atomic<bool> leaderIn{false};
    std::thread slow([&] {
        CHECK(gc.run([&](Connection& c) {
            leaderIn = true;
            std::this_thread::sleep_for(400ms); // holds the batch far past the others' wait
            return insert(c, 1);
        }));
    });
    while (!leaderIn)
        std::this_thread::sleep_for(1ms);
    std::atomic<bool> ran{false};
    auto start = std::chrono::steady_clock::now();
    CHECK_FALSE(gc.run([&](Connection& c) {
        ran = true;
        return insert(c, 2);
    }));
    auto waited = std::chrono::steady_clock::now() - start;
    slow.join();
    CHECK_FALSE(ran);
    CHECK(waited >= 100ms);
    CHECK(waited < 350ms);
    CHECK(count(pool, "1") == 1);
    // The queue works again afterwards.
    CHECK(gc.run([](Connection& c) { return insert(c, 3); }));
}

TEST_CASE("another process holding the write lock: the batch fails as a whole within the wait") {
    TempDb db;
    // The connections' own busy timeout is long; the group commit's wait bounds the call.
    ConnectionPool pool(db.path.string(), 3000);
    REQUIRE((*pool.take(nullptr))->exec("CREATE TABLE t (v INTEGER UNIQUE)") == SQLITE_OK);
    GroupCommit gc(pool, 200ms);
    sqlite3* other = nullptr;
    REQUIRE(sqlite3_open(db.path.c_str(), &other) == SQLITE_OK);
    REQUIRE(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
    // Several callers queue behind one blocked batch: none of them waits much past its own 200 ms.
    std::atomic<int> failed{0};
    std::atomic<std::int64_t> longestMs{0};
    std::vector<std::thread> callers;
    for (int i = 0; i < 8; ++i) {
        callers.emplace_back([&, i] {
            auto start = std::chrono::steady_clock::now();
            if (!gc.run([&](Connection& c) { return insert(c, 100 + i); }))
                ++failed;
            auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::steady_clock::now() - start);
            std::int64_t prev = longestMs;
            while (ms.count() > prev && !longestMs.compare_exchange_weak(prev, ms.count())) {
            }
        });
        std::this_thread::sleep_for(20ms);
    }
    for (auto& t : callers)
        t.join();
    CHECK(failed == 8);
    CHECK(longestMs < 1000); // the connections' 3 s busy timeout did not apply
    CHECK_FALSE(gc.run([](Connection& c) { return insert(c, 1); }));
    sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(other);
    CHECK(gc.run([](Connection& c) { return insert(c, 2); }));
    CHECK(count(pool, "1") == 1);
}

TEST_CASE("the connection pool closes connections a burst opened once no request needs them") {
    TempDb db;
    ConnectionPool pool(db.path.string(), 3000);
    {
        // A burst: 40 connections in use at once.
        std::vector<std::unique_ptr<ConnectionPool::Lease>> burst;
        for (int i = 0; i < 40; ++i)
            burst.push_back(pool.take(nullptr));
    }
    std::size_t afterBurst = pool.idleCount();
    CHECK(afterBurst >= 40);
    pool.trimIdle(); // starts a window: the burst's connections were all needed in it
    CHECK(pool.idleCount() == afterBurst);
    // Steady traffic of one request at a time needs one connection.
    for (int i = 0; i < 10; ++i)
        (void)pool.take(nullptr);
    pool.trimIdle(); // all but the few still used in the window are closed
    CHECK(pool.idleCount() <= 3);
    CHECK(pool.idleCount() >= 1);
    // Still usable.
    auto c = pool.take(nullptr);
    REQUIRE(c);
    CHECK((*c)->exec("SELECT 1") == SQLITE_OK);
}
