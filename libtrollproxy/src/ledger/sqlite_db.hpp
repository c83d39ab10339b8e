// A thin RAII layer over sqlite3: a connection pool, cached statements, transactions.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/fair_mutex.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace trollproxy::internal {

/// One prepared statement, reset when the wrapper goes away.
class Stmt {
public:
    explicit Stmt(sqlite3_stmt* s) : s_(s) {}
    ~Stmt();
    Stmt(const Stmt&) = delete;
    Stmt& operator=(const Stmt&) = delete;

    Stmt& bind(int i, std::int64_t v);
    Stmt& bind(int i, const std::string& v);
    Stmt& bindNull(int i);
    /// Steps once: SQLITE_ROW, SQLITE_DONE or an error code.
    int step();
    std::int64_t integer(int col) const;
    std::string text(int col) const;
    bool isNull(int col) const;

private:
    sqlite3_stmt* s_;
};

/// A connection with its statement cache. Used by one thread at a time.
class Connection {
public:
    /// `writer` serialises this process's write transactions (may be null).
    Connection(sqlite3* db, FairTimedMutex* writer = nullptr, std::int64_t waitMs = 0)
        : db_(db), writer_(writer), waitMs_(waitMs) {}
    ~Connection();
    sqlite3* handle() { return db_; }
    /// A cached prepared statement for this SQL text.
    Stmt prepare(const char* sql);
    int exec(const char* sql);
    std::string lastError() const;
    /// True inside an open transaction (SQLite rolls one back by itself on some errors).
    bool inTransaction();
    FairTimedMutex* writer() { return writer_; }
    std::int64_t waitMs() const { return waitMs_; }

private:
    sqlite3* db_;
    FairTimedMutex* writer_;
    std::int64_t waitMs_;
    std::unordered_map<const char*, sqlite3_stmt*> cache_;
};

/// Connections to one database file, handed out one per caller. Write
/// transactions of this process queue on one mutex (SQLite's own busy handler
/// sleeps and retries without fairness); other processes still meet SQLite's
/// write lock. WAL checkpoints (the only fsyncs unless `fullSync`) run on a
/// background thread, off the request path.
class ConnectionPool {
public:
    /// `fullSync`: fsync the WAL at every commit (synchronous=FULL) instead of
    /// only at checkpoints (NORMAL).
    ConnectionPool(std::string path, std::int64_t busyTimeoutMs, bool fullSync = false);
    ~ConnectionPool();
    ConnectionPool(const ConnectionPool&) = delete;
    ConnectionPool& operator=(const ConnectionPool&) = delete;

    class Lease {
    public:
        Lease(ConnectionPool& pool, std::unique_ptr<Connection> c)
            : pool_(pool), c_(std::move(c)) {}
        ~Lease() { pool_.give(std::move(c_)); }
        Connection* operator->() { return c_.get(); }
        Connection& operator*() { return *c_; }

    private:
        ConnectionPool& pool_;
        std::unique_ptr<Connection> c_;
    };

    /// A connection, or nullptr when the file cannot be opened.
    std::unique_ptr<Lease> take(std::string* error);

    /// Connections waiting to be taken (for tests).
    std::size_t idleCount();

    /// Closes the idle connections that no request needed since the last call
    /// (all but a few): a burst's connections, each with its own page cache,
    /// are not kept for ever. Called every few seconds by the pool's thread.
    void trimIdle();

private:
    void give(std::unique_ptr<Connection> c);
    void checkpointLoop();

    std::string path_;
    std::int64_t busyTimeoutMs_;
    bool fullSync_;
    std::mutex mutex_;
    std::vector<std::unique_ptr<Connection>> idle_;
    std::size_t minIdle_ = 0; ///< fewest idle connections since the last trim
    FairTimedMutex writer_;
    std::mutex stopMutex_;
    std::condition_variable stopCv_;
    bool stop_ = false;
    std::thread checkpointer_;
};

/// BEGIN IMMEDIATE ... COMMIT, rolled back unless committed. Holds the pool's
/// writer mutex for its lifetime (waiting at most the busy timeout for it).
class Transaction {
public:
    explicit Transaction(Connection& c);
    /// Waits at most `wait` in all for the writer mutex and SQLite's write lock.
    Transaction(Connection& c, std::chrono::milliseconds wait);
    ~Transaction();
    bool began() const { return began_; }
    bool commit();

private:
    void unlockWriter();

    Connection& c_;
    bool began_ = false;
    bool done_ = false;
    bool locked_ = false;
};

} // namespace trollproxy::internal
