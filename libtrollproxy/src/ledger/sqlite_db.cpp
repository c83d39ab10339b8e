// sqlite3 plumbing for the embedded ledger.
#include "ledger/sqlite_db.hpp"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <pthread.h>

#include <sqlite3.h>

namespace trollproxy::internal {

Stmt::~Stmt() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
}

Stmt& Stmt::bind(int i, std::int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
}

Stmt& Stmt::bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
}

Stmt& Stmt::bindNull(int i) {
    sqlite3_bind_null(s_, i);
    return *this;
}

int Stmt::step() {
    return sqlite3_step(s_);
}

std::int64_t Stmt::integer(int col) const {
    return sqlite3_column_int64(s_, col);
}

std::string Stmt::text(int col) const {
    const unsigned char* t = sqlite3_column_text(s_, col);
    return t ? std::string(reinterpret_cast<const char*>(t),
                           static_cast<std::size_t>(sqlite3_column_bytes(s_, col)))
             : std::string();
}

bool Stmt::isNull(int col) const {
    return sqlite3_column_type(s_, col) == SQLITE_NULL;
}

Connection::~Connection() {
    for (auto& [sql, s] : cache_)
        sqlite3_finalize(s);
    sqlite3_close(db_);
}

Stmt Connection::prepare(const char* sql) {
    auto it = cache_.find(sql);
    if (it != cache_.end())
        return Stmt(it->second);
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db_, sql, -1, &s, nullptr) != SQLITE_OK) {
        // A bug in our SQL: prepare a statement that fails when stepped.
        sqlite3_prepare_v2(db_, "SELECT RAISE(ABORT, 'bad statement')", -1, &s, nullptr);
        return Stmt(s);
    }
    cache_.emplace(sql, s);
    return Stmt(s);
}

int Connection::exec(const char* sql) {
    return sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
}

bool Connection::inTransaction() {
    return sqlite3_get_autocommit(db_) == 0;
}

std::string Connection::lastError() const {
    return sqlite3_errmsg(db_);
}

ConnectionPool::ConnectionPool(std::string path, std::int64_t busyTimeoutMs, bool fullSync)
    : path_(std::move(path)), busyTimeoutMs_(busyTimeoutMs), fullSync_(fullSync) {
    checkpointer_ = std::thread([this] { checkpointLoop(); });
}

ConnectionPool::~ConnectionPool() {
    {
        std::lock_guard lock(stopMutex_);
        stop_ = true;
    }
    stopCv_.notify_all();
    checkpointer_.join();
}

void ConnectionPool::checkpointLoop() {
    // A library thread takes no signals: they belong to the application's threads.
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    // Small checkpoints often: while a checkpoint syncs the WAL, request threads'
    // writes to it wait, so the stall grows with what the checkpoint copies. On
    // the test machine's disk (fresh ledgers, same minute) c=1 p99 was 2.1-2.5 ms
    // at 100 ms against 22.6 ms at 500 ms, and 28 ms at 5 s (docs/benchmarks.md).
    constexpr std::chrono::milliseconds kEvery{100};
    constexpr int kTrimEvery = 50; // 5 s
    int ticks = 0;
    std::unique_lock lock(stopMutex_);
    while (!stopCv_.wait_for(lock, kEvery, [this] { return stop_; })) {
        lock.unlock();
        if (auto c = take(nullptr)) {
            // PASSIVE: copies what it can without waiting for readers or writers.
            sqlite3_wal_checkpoint_v2((*c)->handle(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr,
                                      nullptr);
        }
        if (++ticks % kTrimEvery == 0)
            trimIdle();
        lock.lock();
    }
}

std::size_t ConnectionPool::idleCount() {
    std::lock_guard lock(mutex_);
    return idle_.size();
}

void ConnectionPool::trimIdle() {
    constexpr std::size_t kKeep = 2; // the checkpointer's and one request's
    std::vector<std::unique_ptr<Connection>> closing;
    {
        std::lock_guard lock(mutex_);
        std::size_t unused = std::min(minIdle_, idle_.size());
        std::size_t close = unused > kKeep ? unused - kKeep : 0;
        for (std::size_t i = 0; i < close; ++i) {
            // The front ones were given back longest ago.
            closing.push_back(std::move(idle_.front()));
            idle_.erase(idle_.begin());
        }
        minIdle_ = idle_.size();
    }
    // Closed outside the lock: sqlite3_close frees the connection's cache.
}

std::unique_ptr<ConnectionPool::Lease> ConnectionPool::take(std::string* error) {
    {
        std::lock_guard lock(mutex_);
        if (!idle_.empty()) {
            auto c = std::move(idle_.back());
            idle_.pop_back();
            minIdle_ = std::min(minIdle_, idle_.size());
            return std::make_unique<Lease>(*this, std::move(c));
        }
        minIdle_ = 0;
    }
    sqlite3* db = nullptr;
    int rc =
        sqlite3_open_v2(path_.c_str(), &db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) {
        if (error)
            *error = db ? sqlite3_errmsg(db) : "cannot open the database";
        sqlite3_close(db);
        return nullptr;
    }
    sqlite3_busy_timeout(db, static_cast<int>(busyTimeoutMs_));
    auto c = std::make_unique<Connection>(db, &writer_, busyTimeoutMs_);
    // WAL: readers never wait for the writer; NORMAL: no fsync per commit
    // (the WAL is synced at checkpoints), durable across process crashes;
    // FULL: one fsync per commit (a group-commit batch), durable across power loss.
    c->exec("PRAGMA journal_mode=WAL");
    c->exec(fullSync_ ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    // Checkpoints run on the pool's background thread; this is only a backstop
    // should the WAL grow past ~40 MB anyway.
    c->exec("PRAGMA wal_autocheckpoint=10000");
    // A batch's statement journal (kept while a statement inside the
    // transaction may fail alone) in memory: on disk it was a file under
    // /var/tmp created, written and unlinked for every batch.
    c->exec("PRAGMA temp_store=MEMORY");
    return std::make_unique<Lease>(*this, std::move(c));
}

void ConnectionPool::give(std::unique_ptr<Connection> c) {
    std::lock_guard lock(mutex_);
    if (idle_.size() < 256)
        idle_.push_back(std::move(c));
}

Transaction::Transaction(Connection& c) : Transaction(c, std::chrono::milliseconds(c.waitMs())) {}

Transaction::Transaction(Connection& c, std::chrono::milliseconds wait) : c_(c) {
    if (wait.count() <= 0)
        return; // no time left: do not begin
    auto start = std::chrono::steady_clock::now();
    if (c_.writer()) {
        locked_ = c_.writer()->lockFor(wait);
        if (!locked_)
            return; // began_ stays false: the ledger is too busy to answer in time
    }
    // Another process may hold SQLite's write lock: wait for it only what is left.
    auto left = wait - std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::steady_clock::now() - start);
    bool shorter = left.count() < c_.waitMs();
    if (shorter)
        sqlite3_busy_timeout(c_.handle(),
                             static_cast<int>(std::max<std::int64_t>(left.count(), 1)));
    began_ = c_.exec("BEGIN IMMEDIATE") == SQLITE_OK;
    if (shorter)
        sqlite3_busy_timeout(c_.handle(), static_cast<int>(c_.waitMs()));
    if (!began_)
        unlockWriter();
}

Transaction::~Transaction() {
    if (began_ && !done_)
        c_.exec("ROLLBACK");
    unlockWriter();
}

void Transaction::unlockWriter() {
    if (locked_) {
        locked_ = false;
        c_.writer()->unlock();
    }
}

bool Transaction::commit() {
    done_ = true;
    bool ok = c_.exec("COMMIT") == SQLITE_OK;
    if (!ok)
        c_.exec("ROLLBACK");
    unlockWriter();
    return ok;
}

} // namespace trollproxy::internal
