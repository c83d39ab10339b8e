// A thin RAII layer over sqlite3: a connection pool, cached statements, transactions.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

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
    Connection(sqlite3* db) : db_(db) {}
    ~Connection();
    sqlite3* handle() { return db_; }
    /// A cached prepared statement for this SQL text.
    Stmt prepare(const char* sql);
    int exec(const char* sql);
    std::string lastError() const;

private:
    sqlite3* db_;
    std::unordered_map<const char*, sqlite3_stmt*> cache_;
};

/// Connections to one database file, handed out one per caller.
class ConnectionPool {
public:
    ConnectionPool(std::string path, std::int64_t busyTimeoutMs)
        : path_(std::move(path)), busyTimeoutMs_(busyTimeoutMs) {}

    class Lease {
    public:
        Lease(ConnectionPool& pool, std::unique_ptr<Connection> c) : pool_(pool), c_(std::move(c)) {}
        ~Lease() { pool_.give(std::move(c_)); }
        Connection* operator->() { return c_.get(); }
        Connection& operator*() { return *c_; }

    private:
        ConnectionPool& pool_;
        std::unique_ptr<Connection> c_;
    };

    /// A connection, or nullptr when the file cannot be opened.
    std::unique_ptr<Lease> take(std::string* error);

private:
    void give(std::unique_ptr<Connection> c);

    std::string path_;
    std::int64_t busyTimeoutMs_;
    std::mutex mutex_;
    std::vector<std::unique_ptr<Connection>> idle_;
};

/// BEGIN IMMEDIATE ... COMMIT, rolled back unless committed.
class Transaction {
public:
    explicit Transaction(Connection& c);
    ~Transaction();
    bool began() const { return began_; }
    bool commit();

private:
    Connection& c_;
    bool began_ = false;
    bool done_ = false;
};

} // namespace trollproxy::internal
