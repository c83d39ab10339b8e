// SliceBook: the process's budget slices, one per (user, pool) it serves, spent from memory.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "proxy/metrics.hpp"
#include "trollproxy/clock.hpp"
#include "trollproxy/config.hpp"
#include "trollproxy/ledger.hpp"

namespace trollproxy::internal {

/// How slices are sized and kept (from the settings).
struct SlicePolicy {
    Money max;                       ///< the most one slice holds; zero: slices are off
    std::int64_t freePermille = 500; ///< share of the pool's free balance one refill may take
    std::int64_t idleMs = 10'000;    ///< an unused slice goes back after this long
    std::int64_t ttlMs = 900'000;    ///< the slice's expiry in the ledger, renewed
};

/// The settings' slice policy (slices are off when slice_max_usd is 0).
SlicePolicy slicePolicy(const ProxySettings& settings);

struct Slice;

/// One request's part of a slice: its estimate, held in memory.
struct SliceClaim {
    std::shared_ptr<Slice> slice;
    Money amount;
    /// The ledger's id of the slice (what the charge draws on).
    const std::string& sliceId() const;
};

/// What claim() did.
enum class ClaimStatus {
    Claimed,           ///< the estimate is held in memory
    NoSlice,           ///< no slice can cover it (balance too low, or larger than a slice):
                       ///< hold it in the ledger per request
    LedgerUnavailable, ///< the slice was short and the ledger did not answer
};

/// Each slice is one hold in the ledger (its id: the instance's prefix, the
/// pool, the user, an epoch); requests take their estimates from it in memory
/// and their charges draw on it (Charge::holdId). Per slice, in nano-USD:
/// granted (added to the hold in the ledger) = drawn (by charges, settled or
/// queued) + claimed (estimates of requests in flight) + free. Claims only
/// take from free, so the charges drawn on a slice never exceed what it holds
/// in the ledger. A slice is given back only when nothing is in flight and
/// every charge drawn on it is settled. Thread-safe.
class SliceBook {
public:
    SliceBook(CreditLedger& ledger, Metrics& metrics, const Clock& clock, std::string idPrefix);
    ~SliceBook();
    SliceBook(const SliceBook&) = delete;
    SliceBook& operator=(const SliceBook&) = delete;

    /// Takes `amount` from the user's slice of `pool`: from memory when it has
    /// it, else after refilling the slice with one ledger call.
    ClaimStatus claim(const std::string& user, Pool pool, Money amount, const SlicePolicy& policy,
                      SliceClaim& out);

    /// Grows a claim by `extra` from the slice's free part (a cost above the
    /// estimate); false, changing nothing, when the slice has not that much.
    bool extend(SliceClaim& claim, Money extra);

    /// The request ended: `drawn` (≤ the claim) is charged on the slice and
    /// the rest of the claim is free again. `pending`: that charge is queued,
    /// not settled yet (settled() follows). The claim is empty after.
    void finish(SliceClaim& claim, Money drawn, bool pending);

    /// A queued charge that drew on `sliceId` is settled in the ledger.
    void settled(const std::string& sliceId);

    /// Renews slices due, gives back idle ones (one round; the service's ticker).
    void tick(const SlicePolicy& policy);

    /// Starts the refiller: slices below their low mark are refilled in the
    /// background, before a request finds them short, under `policy`.
    void start(const SlicePolicy& policy);

    /// The policy the refiller sizes slices by from now on (a reloaded config).
    void setPolicy(const SlicePolicy& policy);

    /// Stops the refiller and gives back every slice that has nothing in
    /// flight or queued (the rest expire, or go back at the next start).
    void stop();

    /// Slices held, and what they hold unspent (for the metrics).
    std::int64_t outstanding() const;

    /// The (user, pool) pairs the book has a slice for: each user served
    /// since their last slice went back (tick() forgets the others).
    std::size_t owners() const;

private:
    std::shared_ptr<Slice> sliceFor(const std::string& user, Pool pool);
    /// Takes no more claims; `refused`: the balance was too low for it. Lock held.
    void retire(Slice& slice, bool refused);
    /// The slices held in the ledger, copied (byId_ changes while they are walked). Lock held.
    std::vector<std::shared_ptr<Slice>> heldSlices() const;
    /// Adds to a short slice with one ledger call (one refill per slice at a time).
    ClaimStatus refill(Slice& slice, Money need, const SlicePolicy& policy);
    /// The refill's answer applied to the slice; ids: slices to give back.
    ClaimStatus settleRefill(Slice& slice, const SliceGrant& grant, const SlicePolicy& policy,
                             std::vector<std::string>& ids);
    /// Gives a retired slice back when nothing is in flight or queued. Lock held.
    void releaseIfIdle(std::shared_ptr<Slice> slice, std::vector<std::string>& ids);
    void releaseInLedger(const std::vector<std::string>& ids);
    void refillLoop();
    void publish();

    CreditLedger& ledger_;
    Metrics& metrics_;
    const Clock& clock_;
    const std::string idPrefix_;

    mutable std::mutex mutex_;
    std::unordered_map<std::string, std::shared_ptr<Slice>> byOwner_; // user '\0' pool
    std::unordered_map<std::string, std::shared_ptr<Slice>> byId_;    // held in the ledger
    std::uint64_t epoch_ = 0;
    std::vector<std::shared_ptr<Slice>> lowSlices_; // for the refiller
    SlicePolicy policy_;                            // the refiller's
    std::condition_variable wake_;
    bool stopping_ = false;
    std::thread refiller_;
};

} // namespace trollproxy::internal
