// Group commit for the embedded ledger's request-path writes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>

namespace trollproxy::internal {

class Connection;
class ConnectionPool;

/// Runs write operations from many threads in shared transactions. The first
/// caller that finds no batch running becomes the leader: it opens one
/// `BEGIN IMMEDIATE` transaction, runs every queued operation (its own and the
/// others', in arrival order) each in its own SAVEPOINT, commits once and wakes
/// their callers. So a burst of reserves and settles costs one lock hand-off and
/// one WAL commit per batch instead of one per operation, and the callers see the
/// same serial order as single transactions would give them.
///
/// An operation returns false when the database failed under it: its savepoint
/// is rolled back and it alone fails. When the transaction cannot begin or
/// commit, every operation of the batch fails (none of them took effect).
class GroupCommit {
public:
    using Op = std::function<bool(Connection&)>;

    GroupCommit(ConnectionPool& pool, std::chrono::milliseconds wait) : pool_(pool), wait_(wait) {}

    /// Runs `op` in a committed transaction; false when it did not take effect:
    /// the database failed, or the queue did not reach `op` within the wait.
    /// Returns within about the wait: an op whose time ran out while queued is
    /// dropped, and a batch waits for the database only until the earliest
    /// deadline among its ops.
    bool run(const Op& op);

private:
    struct Pending {
        const Op* op;
        std::chrono::steady_clock::time_point deadline;
        std::condition_variable cv;
        bool done = false;
        bool ok = false;
    };
    static constexpr std::size_t kMaxBatch = 128;

    void lead(std::unique_lock<std::mutex>& lock, Pending& me);
    void execute(std::deque<Pending*>& batch, std::chrono::steady_clock::time_point deadline);

    ConnectionPool& pool_;
    std::chrono::milliseconds wait_;
    std::mutex m_;
    std::deque<Pending*> queue_;
    bool leading_ = false;
};

} // namespace trollproxy::internal
