// Group commit: one leader runs the queued writes of many threads in one transaction.
#include "ledger/sqlite_group_commit.hpp"

#include <algorithm>

#include <sqlite3.h>

#include "ledger/sqlite_db.hpp"

namespace trollproxy::internal {

bool GroupCommit::run(const Op& op) {
    Pending me;
    me.op = &op;
    me.deadline = std::chrono::steady_clock::now() + wait_;
    std::unique_lock lock(m_);
    queue_.push_back(&me);
    while (!me.done) {
        if (!leading_) {
            lead(lock, me);
            continue;
        }
        if (me.cv.wait_until(lock, me.deadline) == std::cv_status::timeout && !me.done) {
            auto it = std::find(queue_.begin(), queue_.end(), &me);
            if (it != queue_.end()) {
                queue_.erase(it);
                return false; // never started: nothing happened
            }
            // A leader is running it now: its wait for the lock ends by the batch's
            // earliest deadline (at or before this one), then only statements run.
            me.cv.wait(lock, [&] { return me.done; });
        }
    }
    return me.ok;
}

void GroupCommit::lead(std::unique_lock<std::mutex>& lock, Pending& me) {
    leading_ = true;
    while (!me.done && !queue_.empty()) {
        std::deque<Pending*> batch;
        auto now = std::chrono::steady_clock::now();
        auto deadline = std::chrono::steady_clock::time_point::max();
        while (!queue_.empty() && batch.size() < kMaxBatch) {
            Pending* p = queue_.front();
            queue_.pop_front();
            if (p->deadline <= now) {
                // Its caller's time ran out while it waited: it fails without running.
                p->ok = false;
                p->done = true;
                if (p != &me)
                    p->cv.notify_one();
                continue;
            }
            deadline = std::min(deadline, p->deadline);
            batch.push_back(p);
        }
        if (batch.empty())
            continue;
        lock.unlock();
        execute(batch, deadline);
        lock.lock();
        // Each caller waits under m_ for `done`, so its Pending outlives this loop.
        for (Pending* p : batch) {
            p->done = true;
            if (p != &me)
                p->cv.notify_one();
        }
    }
    // Hand leadership to the oldest caller still waiting.
    leading_ = false;
    if (!queue_.empty())
        queue_.front()->cv.notify_one();
}

void GroupCommit::execute(std::deque<Pending*>& batch,
                          std::chrono::steady_clock::time_point deadline) {
    auto failAll = [&] {
        for (Pending* p : batch)
            p->ok = false;
    };
    failAll();
    auto lease = pool_.take(nullptr);
    if (!lease)
        return;
    Connection& c = **lease;
    auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    Transaction tx(c, left);
    if (!tx.began())
        return;
    for (Pending* p : batch) {
        if (c.exec("SAVEPOINT op") != SQLITE_OK)
            return failAll(); // ~Transaction rolls everything back
        bool ok = (*p->op)(c);
        if (!c.inTransaction())
            return failAll(); // SQLite rolled the whole transaction back (I/O error, disk full)
        if (!ok && c.exec("ROLLBACK TO op") != SQLITE_OK)
            return failAll();
        if (c.exec("RELEASE op") != SQLITE_OK)
            return failAll();
        p->ok = ok;
    }
    if (!tx.commit())
        failAll();
}

} // namespace trollproxy::internal
