// SettlementQueue: one write per charge on the request path; batched settlement behind it.
#include "proxy/settlement_queue.hpp"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ledger/journal_file.hpp"
#include "trollproxy/journal.hpp"

namespace trollproxy::internal {

namespace {

std::vector<Charge> readJournal(const std::string& path, std::int64_t& corrupt) {
    std::vector<Charge> out;
    for (const std::string& line : readLines(path)) {
        if (auto c = decodeCharge(line))
            out.push_back(std::move(*c));
        else
            ++corrupt; // torn by a crash mid-write: never acknowledged
    }
    return out;
}

} // namespace

std::size_t SettlementQueue::laneOf(const std::string& userId) const {
    return std::hash<std::string>{}(userId) % lanes_.size();
}

std::int64_t SettlementQueue::unsettled() const {
    return queued() + static_cast<std::int64_t>(inflight_.size());
}

std::int64_t SettlementQueue::queued() const {
    std::int64_t n = 0;
    for (const auto& q : lanes_)
        n += static_cast<std::int64_t>(q.size());
    return n;
}

SettlementQueue::SettlementQueue(std::string journalPath, CreditLedger& ledger, Metrics& metrics,
                                 const Clock& clock, bool syncEach)
    : path_(std::move(journalPath)), ledger_(ledger), metrics_(metrics), clock_(clock),
      syncEach_(syncEach) {}

SettlementQueue::~SettlementQueue() {
    stop();
}

void SettlementQueue::start(std::function<void(const Charge&)> onSettled) {
    {
        std::lock_guard lock(mutex_);
        if (!flushers_.empty() || stopping_)
            return;
        onSettled_ = std::move(onSettled);
        std::int64_t corrupt = 0;
        for (auto& c : readJournal(path_, corrupt))
            lane(c.userId).push_back(std::move(c));
        if (corrupt > 0)
            metrics_.add("trollproxy_journal_corrupt_lines_total", static_cast<double>(corrupt));
        removeWhenEmpty_ = true;
        compact(); // the file now holds exactly the queue, without torn lines
    }
    // What a previous process left is settled before anything else, while its
    // holds are still in the ledger (the caller may release them next).
    drainAll();
    std::lock_guard lock(mutex_);
    for (int i = 0; i < kFlushers; ++i)
        flushers_.emplace_back([this, i] { run(static_cast<std::size_t>(i)); });
}

Result<void> SettlementQueue::appendLine(const std::string& line) {
    if (fd_ < 0) {
        fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd_ < 0)
            return Error{ErrorCode::Unavailable,
                         "cannot open journal " + path_ + ": " + std::strerror(errno)};
    }
    if (!writeAll(fd_, line))
        return Error{ErrorCode::Unavailable,
                     "cannot write journal " + path_ + ": " + std::strerror(errno)};
    return {};
}

void SettlementQueue::keepPace() {
    std::unique_lock lock(mutex_);
    room_.wait_for(lock, kPaceWait,
                   [this] { return unsettled() < kPaceQueued || !ledgerAnswering_ || stopping_; });
}

Result<void> SettlementQueue::submit(const Charge& charge, bool sync) {
    std::string line = encodeCharge(charge) + "\n";
    if (!sync)
        keepPace(); // outside the gate: the waiters go on together
    // Request threads queue here in arrival order once one has waited long:
    // hundreds of them on a plain mutex starved some for a second.
    (void)submitters_.lockFor(std::chrono::hours(24));
    struct Gate {
        FairTimedMutex& m;
        ~Gate() { m.unlock(); }
    } gate{submitters_};
    std::unique_lock lock(mutex_);
    // The ledger takes charges slower than they come: wait a while for room,
    // then let the caller settle this one itself (the pace of the ledger). A
    // charge journalled because the ledger is down is always taken.
    if (!sync &&
        !room_.wait_for(lock, std::chrono::seconds(1), [this] { return unsettled() < kMaxQueued; }))
        return Error{ErrorCode::Unavailable, "the settlement queue is full"};
    if (auto r = appendLine(line); !r)
        return r;
    const std::int64_t seq = ++appendedSeq_;
    removeWhenEmpty_ |= sync;
    // Queued before it is synced: a rewrite of the file meanwhile keeps it.
    const std::size_t i = laneOf(charge.userId);
    lanes_[i].push_back(charge);
    ++appendedSinceCompact_;
    // The lane's flusher waits for a first charge, then for a full batch
    // (or kLinger): a wake-up per batch, not per charge.
    if (lanes_[i].size() == 1 || lanes_[i].size() == kBatch)
        wakes_[i].notify_one();
    if (sync || syncEach_)
        return syncThrough(lock, seq);
    return {};
}

Result<void> SettlementQueue::syncThrough(std::unique_lock<std::mutex>& lock, std::int64_t seq) {
    while (syncedSeq_ < seq) {
        if (syncing_) {
            synced_.wait(lock);
            continue;
        }
        // This thread syncs for every line written so far (group commit).
        // A copy of the descriptor: a rewrite may close fd_ meanwhile (the new
        // file it renames in place is synced with every queued line).
        const int fd = fd_ >= 0 ? ::dup(fd_) : -1;
        if (fd < 0 && fd_ >= 0)
            return Error{ErrorCode::Unavailable,
                         "cannot sync journal " + path_ + ": " + std::strerror(errno)};
        if (fd < 0) { // removed: everything written was settled
            syncedSeq_ = std::max(syncedSeq_, appendedSeq_);
            break;
        }
        syncing_ = true;
        const std::int64_t upTo = appendedSeq_;
        lock.unlock();
        const bool ok = ::fsync(fd) == 0;
        ::close(fd);
        lock.lock();
        syncing_ = false;
        if (ok)
            syncedSeq_ = std::max(syncedSeq_, upTo);
        synced_.notify_all();
        if (!ok)
            return Error{ErrorCode::Unavailable,
                         "cannot sync journal " + path_ + ": " + std::strerror(errno)};
    }
    return {};
}

std::int64_t SettlementQueue::depth() const {
    std::lock_guard lock(mutex_);
    return unsettled();
}

bool SettlementQueue::flushBatch(std::unique_lock<std::mutex>& lock, std::size_t lane) {
    std::deque<Charge>& queue = lanes_[lane];
    const std::size_t n = std::min(slowLedger_[lane] ? kMaxBatch : kBatch, queue.size());
    std::vector<Charge> batch(
        std::make_move_iterator(queue.begin()),
        std::make_move_iterator(queue.begin() + static_cast<std::ptrdiff_t>(n)));
    queue.erase(queue.begin(), queue.begin() + static_cast<std::ptrdiff_t>(n));
    for (const auto& c : batch)
        inflight_.emplace(c.requestId, c);
    lock.unlock();
    const std::int64_t startNs = clock_.steadyNs();
    std::vector<SettleOutcome> outcomes = ledger_.settleBatch(batch);
    std::size_t done = 0;
    for (std::size_t i = 0; i < batch.size(); ++i) {
        if (outcomes[i].status == SettleStatus::LedgerUnavailable)
            continue;
        ++done;
        if (onSettled_)
            onSettled_(batch[i]);
    }
    const std::int64_t tookNs = clock_.steadyNs() - startNs;
    const double seconds = static_cast<double>(tookNs) / 1e9;
    lock.lock();
    slowLedger_[lane] = tookNs >= std::chrono::nanoseconds(kSlowBatch).count();
    metrics_.add("trollproxy_settlement_batches_total");
    metrics_.add("trollproxy_settlement_charges_total", static_cast<double>(done));
    metrics_.add("trollproxy_settlement_flush_seconds_total", seconds);
    for (const auto& c : batch)
        inflight_.erase(c.requestId);
    // What the ledger did not take goes back to the front, in order.
    for (std::size_t i = batch.size(); i > 0; --i) {
        if (outcomes[i - 1].status == SettleStatus::LedgerUnavailable)
            queue.push_front(std::move(batch[i - 1]));
    }
    // A ledger that took part of the batch answers (e.g. a busy MongoDB whose
    // compare-and-sets for one user ran out of tries): requests keep its pace.
    ledgerAnswering_ = done > 0;
    if (done < n)
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "settle"}}));
    // A rewrite costs a line per unsettled charge: only when the file holds
    // at least as many settled lines as unsettled ones (amortized O(1) per
    // charge, however deep the queue gets while the ledger lags).
    const std::int64_t left = unsettled();
    if ((left == 0 && (removeWhenEmpty_ || appendedSinceCompact_ >= kTruncateEvery)) ||
        (appendedSinceCompact_ >= kCompactEvery && appendedSinceCompact_ >= left))
        compact();
    room_.notify_all();
    metrics_.set("trollproxy_settlement_queue_depth", static_cast<double>(unsettled()));
    return done > 0;
}

void SettlementQueue::compact() {
    appendedSinceCompact_ = 0;
    if (unsettled() == 0) {
        // Everything is settled. The common case, after journal-first charges:
        // empty the file in place (a crash before that replays settled charges,
        // which the ledger ignores). After an outage or at start, remove it.
        if (!removeWhenEmpty_ && fd_ >= 0 && ::ftruncate(fd_, 0) == 0)
            return;
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = -1;
        ::unlink(path_.c_str());
        syncDirectoryOf(path_);
        removeWhenEmpty_ = false;
        return;
    }
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
    }
    std::string tmp = path_ + ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = fd >= 0;
    for (const auto& [id, c] : inflight_)
        ok = ok && writeAll(fd, encodeCharge(c) + "\n");
    for (const auto& queue : lanes_)
        for (const auto& c : queue)
            ok = ok && writeAll(fd, encodeCharge(c) + "\n");
    // Lines that were never fsync'd (journal-first, no full durability) need
    // no fsync here either: the rewrite survives the process dying as they do.
    const bool durable = syncEach_ || removeWhenEmpty_;
    ok = ok && (!durable || ::fsync(fd) == 0);
    if (fd >= 0)
        ::close(fd);
    // On failure the old file stays: it holds every unsettled charge, and more.
    if (ok && ::rename(tmp.c_str(), path_.c_str()) == 0 && durable)
        syncDirectoryOf(path_);
}

void SettlementQueue::run(std::size_t lane) {
    std::unique_lock lock(mutex_);
    for (;;) {
        wakes_[lane].wait(lock, [this, lane] { return stopping_ || !lanes_[lane].empty(); });
        wakes_[lane].wait_for(lock, kLinger,
                              [this, lane] { return stopping_ || lanes_[lane].size() >= kBatch; });
        if (stopping_)
            return;
        if (flushBatch(lock, lane))
            continue;
        // The ledger is down: try again in a while, not in a tight loop.
        wakes_[lane].wait_for(lock, std::chrono::milliseconds(500), [this] { return stopping_; });
    }
}

void SettlementQueue::drainAll() {
    std::unique_lock lock(mutex_);
    for (std::size_t i = 0; i < lanes_.size(); ++i) {
        while (!lanes_[i].empty() && flushBatch(lock, i)) {
        }
    }
}

void SettlementQueue::stop() {
    {
        std::lock_guard lock(mutex_);
        if (stopping_)
            return;
        stopping_ = true;
    }
    for (auto& w : wakes_)
        w.notify_all();
    for (auto& t : flushers_)
        t.join();
    flushers_.clear();
    drainAll();
    std::lock_guard lock(mutex_);
    removeWhenEmpty_ = true;
    if (unsettled() == 0)
        compact();
    if (fd_ >= 0) {
        ::fsync(fd_);
        ::close(fd_);
        fd_ = -1;
    }
}

} // namespace trollproxy::internal
