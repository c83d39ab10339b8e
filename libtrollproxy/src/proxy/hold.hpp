// Hold: one request's reservation (in the ledger, or a claim on a budget slice),
// released unless it was settled.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include "proxy/metrics.hpp"
#include "proxy/slice_book.hpp"
#include "trollproxy/clock.hpp"
#include "trollproxy/ledger.hpp"

namespace trollproxy::internal {

/// Holds whose reserve() did not answer (a timeout): the database may still
/// apply them once it answers again, and nobody would release them until the
/// sweep. They are released, again and again for a minute, while the ledger
/// answers; a release of a hold that was never taken changes nothing.
/// Thread-safe.
class DoubtfulHolds {
public:
    void add(const std::string& requestId, std::int64_t nowMs);
    /// One round of releases (the service's background round, ledger up).
    void retry(CreditLedger& ledger, Metrics& metrics, std::int64_t nowMs);

private:
    static constexpr std::int64_t kRetryForMs = 60'000;
    std::mutex mutex_;
    std::map<std::string, std::int64_t> since_; // request id → when its reserve failed
};

/// Owns a request's hold from reserve() to its settlement: a claim on the
/// (user, pool) slice in memory when slices are on and one can cover it, else
/// a hold of its own in the ledger. Its destructor returns a hold still
/// outstanding, so no path that serves nothing can leave money locked. Not
/// thread-safe: one request's thread.
class Hold {
public:
    Hold(CreditLedger& ledger, SliceBook& slices, DoubtfulHolds& doubtful, Metrics& metrics,
         const Clock& clock)
        : ledger_(ledger), slices_(slices), doubtful_(doubtful), metrics_(metrics), clock_(clock) {}
    ~Hold() { release(); }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;

    /// Takes the amount from the slice, or out of the pool. Held only when Reserved.
    ReserveStatus reserve(const HoldRequest& request, const SlicePolicy& policy);

    /// Whether money is held now.
    bool held() const { return held_; }

    /// Whether what is held covers `cost` (a slice's claim grows to it when
    /// the slice has the money).
    bool covers(Money cost);

    /// Points the charge at the slice it draws on (nothing for a ledger hold).
    void drawOn(Charge& charge);

    /// Returns the hold unspent (nothing was served). Failures leave it to the sweep.
    void release();

    /// A long stream keeps its hold: moves the expiry `ttlMs` ahead once a
    /// third of it has passed (a slice is renewed by its book).
    void renewIfDue(std::int64_t ttlMs);

    /// The charge is about to replace the hold. A slice counts it as pending
    /// until SliceBook::settled(charge.holdId) says the ledger has it.
    void settled();

private:
    CreditLedger& ledger_;
    SliceBook& slices_;
    DoubtfulHolds& doubtful_;
    Metrics& metrics_;
    const Clock& clock_;
    std::string requestId_;
    Money amount_;
    SliceClaim claim_; // set when a slice holds it
    Money drawn_;      // what the charge draws on the slice
    bool held_ = false;
    std::int64_t renewAtMs_ = 0; // steady clock
};

} // namespace trollproxy::internal
