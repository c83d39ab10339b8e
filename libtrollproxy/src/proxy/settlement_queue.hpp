// SettlementQueue: journal-first settlement — a charge is written to the journal file, then
// settled in the ledger by a background flusher in batches.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/fair_mutex.hpp"
#include "proxy/metrics.hpp"
#include "trollproxy/clock.hpp"
#include "trollproxy/ledger.hpp"

namespace trollproxy::internal {

/// Owns the process's charge journal (the same line format as ChargeJournal,
/// so `trollproxy-admin journal replay` reads it). submit() appends one line
/// with one write(2) — it survives the process dying — and returns; the
/// flusher settles queued charges in batches, idempotent by request id, and
/// keeps retrying while the ledger is down. The file always holds every
/// charge not yet settled (settled ones are dropped when it is rewritten);
/// it is removed when nothing is left. Thread-safe.
class SettlementQueue {
public:
    /// `syncEach`: every journal-first line is fsync'd before submit()
    /// returns (the ledger asks for full durability), one fsync for all the
    /// lines written meanwhile.
    SettlementQueue(std::string journalPath, CreditLedger& ledger, Metrics& metrics,
                    const Clock& clock, bool syncEach = false);
    ~SettlementQueue();
    SettlementQueue(const SettlementQueue&) = delete;
    SettlementQueue& operator=(const SettlementQueue&) = delete;

    /// Settles the charges a previous process left in the journal (as far as
    /// the ledger takes them now), then starts the flushers. `onSettled` is
    /// called (on a flusher's thread) for each charge the ledger took.
    void start(std::function<void(const Charge&)> onSettled = {});

    /// Journals the charge and queues it; with `sync` the line is fsync'd
    /// before this returns (it then survives the machine too). An error when
    /// the journal cannot be written (the charge is recorded nowhere), or when
    /// kMaxQueued charges wait for a slow ledger for a second (not `sync`):
    /// then the caller settles it itself.
    Result<void> submit(const Charge& charge, bool sync);

    /// Stops the flusher after one last attempt to settle what is queued;
    /// what the ledger did not take stays in the journal for the next start.
    void stop();

    /// Charges journalled and not yet settled.
    std::int64_t depth() const;

private:
    // A lane's flusher wakes for kBatch charges (or after kLinger) and takes
    // that many; after a batch that took the ledger kSlowBatch or more, up to
    // kMaxBatch: behind a slow ledger (a distant MongoDB) the batches grow, and
    // with them what each round trip is shared by. A fast one (SQLite, a few ms
    // a batch) keeps its batches and its write lock short.
    static constexpr std::size_t kBatch = 256;
    static constexpr std::size_t kMaxBatch = 1024;
    static constexpr std::chrono::milliseconds kSlowBatch{20};
    // Journal-first charges waiting at most (about 500 bytes each in memory).
    static constexpr std::int64_t kMaxQueued = 100'000;
    // A slow ledger's round trips overlap. Each flusher has its own lane of
    // users, so that two batches never race for one user's document.
    static constexpr int kFlushers = 4;
    static constexpr std::int64_t kCompactEvery = 4096; // appended lines between rewrites, at least
    // Settled lines a file keeps before it is emptied: a crash replays them
    // (the ledger ignores settled ids), and no truncate runs per request.
    static constexpr std::int64_t kTruncateEvery = 1024;
    // A batch short of kBatch waits this long for more charges: one ledger
    // transaction for many (the charges are already in the journal).
    static constexpr std::chrono::milliseconds kLinger{2};
    // Past this many unsettled charges a request waits (at most kPaceWait)
    // for the flusher while the ledger answers: the flusher is one thread
    // among the request threads, and without it fell behind under load (the
    // queue grew by thousands a second, settled only after the load).
    static constexpr std::int64_t kPaceQueued = 2048;
    static constexpr std::chrono::milliseconds kPaceWait{500};

    void run(std::size_t lane);
    /// Waits while kPaceQueued charges are unsettled and the ledger answers.
    void keepPace();
    /// Settles one batch from the lane; false when the ledger took none of it.
    bool flushBatch(std::unique_lock<std::mutex>& lock, std::size_t lane);
    std::size_t laneOf(const std::string& userId) const;
    std::deque<Charge>& lane(const std::string& userId) { return lanes_[laneOf(userId)]; }
    /// Charges waiting in all lanes. Lock held.
    std::int64_t queued() const;
    /// Charges waiting or being settled. Lock held.
    std::int64_t unsettled() const;
    /// Settles everything queued on the calling thread (at stop).
    void drainAll();
    /// Rewrites the file with what is still unsettled (or removes it). Lock held.
    void compact();
    Result<void> appendLine(const std::string& line);
    /// Waits until the line numbered `seq` is on disk, syncing for every
    /// line written so far when no other thread does. Lock held.
    Result<void> syncThrough(std::unique_lock<std::mutex>& lock, std::int64_t seq);

    const std::string path_;
    CreditLedger& ledger_;
    Metrics& metrics_;
    const Clock& clock_;
    const bool syncEach_;
    std::function<void(const Charge&)> onSettled_;

    FairTimedMutex submitters_; // taken by submit() before mutex_
    mutable std::mutex mutex_;
    std::condition_variable wakes_[kFlushers];
    std::vector<std::deque<Charge>> lanes_ = std::vector<std::deque<Charge>>(kFlushers); // waiting
    bool slowLedger_[kFlushers] = {};        // the lane's last batch took kSlowBatch or more
    std::map<std::string, Charge> inflight_; // being settled now, by request id
    std::int64_t appendedSinceCompact_ = 0;
    int fd_ = -1;
    bool removeWhenEmpty_ = false; // the file held fsync'd or inherited lines
    bool stopping_ = false;
    bool ledgerAnswering_ = true;  // the ledger took some of the last batch
    std::int64_t appendedSeq_ = 0; // lines written
    std::int64_t syncedSeq_ = 0;   // lines known on disk
    bool syncing_ = false;
    std::condition_variable synced_;
    std::condition_variable room_; // a batch was settled
    std::vector<std::thread> flushers_;
};

} // namespace trollproxy::internal
