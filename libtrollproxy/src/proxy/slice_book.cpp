// SliceBook: claims from memory, refills with one ledger call, slices given back when idle.
#include "proxy/slice_book.hpp"

#include <algorithm>
#include <cstdio>

namespace trollproxy::internal {

/// One slice. Its amounts change under the book's mutex only.
struct Slice {
    std::string id;
    std::string user;
    Pool pool = Pool::CreditsNew;
    std::int64_t granted = 0;   ///< added to the hold in the ledger, in all
    std::int64_t drawn = 0;     ///< drawn on by charges (settled or queued)
    std::int64_t claimed = 0;   ///< estimates of requests in flight
    std::int64_t pending = 0;   ///< charges drawn on it, queued, not settled yet
    std::int64_t refills = 0;   ///< ledger calls adding to it now
    std::int64_t target = 0;    ///< the size the last refill aimed at
    std::int64_t lastClaim = 0; ///< the newest request's estimate
    std::int64_t drawnAtRefill = 0;
    std::int64_t refilledAtMs = 0;   ///< steady clock
    std::int64_t lastUseMs = 0;      ///< steady clock
    std::int64_t renewAtMs = 0;      ///< steady clock
    std::int64_t retiredAtMs = 0;    ///< steady clock
    bool inLedger = false;           ///< a refill succeeded: the ledger holds it
    bool retired = false;            ///< takes no claims; given back once idle
    bool lowQueued = false;          ///< waiting for the refiller
    bool lowRefused = false;         ///< the last refill was refused ...
    std::int64_t lowRefusedAtMs = 0; ///< ... then (steady clock)
    std::mutex refilling;            ///< one refill at a time

    std::int64_t free() const { return granted - drawn - claimed; }
    /// Below this the refiller tops it up: a quarter of its size, and at least
    /// room for one more request like the last (else that one would refill it
    /// on its own thread, waiting for the ledger).
    std::int64_t lowMark() const { return std::max(target / 4, lastClaim); }
};

const std::string& SliceClaim::sliceId() const {
    static const std::string kNone;
    return slice ? slice->id : kNone;
}

namespace {

// A slice aims to hold what its user spends in this many seconds (one refill
// per that long at a steady rate), within slice_max_usd.
constexpr std::int64_t kSpendSeconds = 10;

// After a slice was refused (balance too low), requests hold per request for
// this long before a new slice is tried.
constexpr std::int64_t kRetryAfterRefusalMs = 1'000;

std::string ownerKey(const std::string& user, Pool pool) {
    std::string k = user;
    k += '\0';
    k += poolName(pool);
    return k;
}

std::string hex8(std::string_view s) {
    std::uint64_t h = 1469598103934665603ULL; // FNV-1a
    for (unsigned char c : s)
        h = (h ^ c) * 1099511628211ULL;
    char buf[20];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}

} // namespace

SlicePolicy slicePolicy(const ProxySettings& s) {
    return SlicePolicy{s.sliceMax, s.sliceFreePermille, s.sliceIdleSeconds * 1000,
                       s.holdTtlSeconds * 1000};
}

SliceBook::SliceBook(CreditLedger& ledger, Metrics& metrics, const Clock& clock,
                     std::string idPrefix)
    : ledger_(ledger), metrics_(metrics), clock_(clock), idPrefix_(std::move(idPrefix)) {}

SliceBook::~SliceBook() {
    stop();
}

void SliceBook::retire(Slice& s, bool refused) {
    s.retired = true;
    // Refused: the user's requests hold per request for a while. Otherwise
    // (idle, swept) the next request may start a new slice at once.
    s.retiredAtMs = clock_.steadyMs() - (refused ? 0 : kRetryAfterRefusalMs);
}

std::vector<std::shared_ptr<Slice>> SliceBook::heldSlices() const {
    std::vector<std::shared_ptr<Slice>> all;
    all.reserve(byId_.size());
    for (const auto& [id, s] : byId_)
        all.push_back(s);
    return all;
}

std::shared_ptr<Slice> SliceBook::sliceFor(const std::string& user, Pool pool) {
    const std::string key = ownerKey(user, pool);
    auto it = byOwner_.find(key);
    if (it != byOwner_.end() &&
        (!it->second->retired ||
         clock_.steadyMs() - it->second->retiredAtMs < kRetryAfterRefusalMs))
        return it->second;
    auto s = std::make_shared<Slice>();
    s->id =
        idPrefix_ + "slice_" + poolName(pool) + "_" + hex8(user) + "_" + std::to_string(++epoch_);
    s->user = user;
    s->pool = pool;
    s->lastUseMs = clock_.steadyMs();
    byOwner_[key] = s;
    byId_[s->id] = s;
    return s;
}

ClaimStatus SliceBook::claim(const std::string& user, Pool pool, Money amount,
                             const SlicePolicy& policy, SliceClaim& out) {
    if (policy.max.nanos <= 0 || amount.nanos > policy.max.nanos || amount.nanos <= 0)
        return ClaimStatus::NoSlice;
    // A refill may be taken by others' claims before this one: try a few times.
    for (int attempt = 0; attempt < 3; ++attempt) {
        std::shared_ptr<Slice> s;
        {
            std::lock_guard lock(mutex_);
            s = sliceFor(user, pool);
            if (s->retired)
                return ClaimStatus::NoSlice;
            if (s->free() >= amount.nanos) {
                s->claimed += amount.nanos;
                s->lastClaim = amount.nanos;
                s->lastUseMs = clock_.steadyMs();
                const bool backingOff =
                    s->lowRefused && clock_.steadyMs() - s->lowRefusedAtMs < kRetryAfterRefusalMs;
                if (s->free() < s->lowMark() && !s->lowQueued && s->refills == 0 && !backingOff) {
                    s->lowQueued = true;
                    lowSlices_.push_back(s);
                    wake_.notify_one();
                }
                out = SliceClaim{s, amount};
                return ClaimStatus::Claimed;
            }
        }
        ClaimStatus st = refill(*s, amount, policy);
        if (st == ClaimStatus::NoSlice) {
            std::vector<std::string> ids;
            {
                std::lock_guard lock(mutex_);
                if (!s->retired)
                    retire(*s, true);
                releaseIfIdle(s, ids);
            }
            // The slice's rest goes back now, so that the request's own hold can use it.
            releaseInLedger(ids);
            return st;
        }
        if (st == ClaimStatus::LedgerUnavailable)
            return st;
    }
    return ClaimStatus::NoSlice; // raced three times: hold this one per request
}

ClaimStatus SliceBook::refill(Slice& s, Money need, const SlicePolicy& policy) {
    std::lock_guard one(s.refilling);
    SliceRequest req;
    {
        std::lock_guard lock(mutex_);
        if (s.retired || s.free() >= need.nanos)
            return ClaimStatus::Claimed; // refilled meanwhile (or retired): look again
        const std::int64_t free = std::max<std::int64_t>(s.free(), 0);
        // Adapts to the spend: room for twice what is in flight, and for
        // kSpendSeconds of what was drawn per second since the last refill,
        // bounded by the setting.
        const std::int64_t now = clock_.steadyMs();
        const std::int64_t elapsedMs = std::max<std::int64_t>(now - s.refilledAtMs, 100);
        const std::int64_t spent = s.drawn - s.drawnAtRefill;
        const std::int64_t perSpan = spent / elapsedMs * kSpendSeconds * 1000 +
                                     spent % elapsedMs * kSpendSeconds * 1000 / elapsedMs;
        s.target = std::clamp(
            std::max({4 * need.nanos, 2 * (s.claimed + need.nanos), perSpan + 2 * s.claimed}),
            need.nanos, policy.max.nanos);
        req.sliceId = s.id;
        req.userId = s.user;
        req.pool = s.pool;
        req.want = Money{s.target - free};
        req.atLeast = Money{std::max<std::int64_t>(need.nanos - free, 1)};
        req.freePermille = policy.freePermille;
        req.expiresAtMs = clock_.wallMs() + policy.ttlMs;
        ++s.refills; // not given back while the ledger may be adding to it
    }
    SliceGrant g = ledger_.reserveSlice(req);
    if (g.status == ReserveStatus::InsufficientCredits &&
        (req.want.nanos > req.atLeast.nanos || req.freePermille < 1000)) {
        // Too little for a slice of that size: what this request lacks, exactly,
        // as its own hold would take it (the balance may still cover that).
        req.want = req.atLeast;
        req.freePermille = 1000;
        g = ledger_.reserveSlice(req);
    }
    std::vector<std::string> ids;
    ClaimStatus st = settleRefill(s, g, policy, ids);
    releaseInLedger(ids);
    return st;
}

ClaimStatus SliceBook::settleRefill(Slice& s, const SliceGrant& g, const SlicePolicy& policy,
                                    std::vector<std::string>& ids) {
    std::lock_guard lock(mutex_);
    --s.refills;
    const char* result = "unavailable";
    ClaimStatus st = ClaimStatus::LedgerUnavailable;
    if (g.status == ReserveStatus::Reserved) {
        s.granted += g.added.nanos;
        s.drawnAtRefill = s.drawn;
        s.refilledAtMs = clock_.steadyMs();
        s.inLedger = true;
        s.renewAtMs = clock_.steadyMs() + policy.ttlMs / 3;
        s.lowRefused = false;
        result = "granted";
        st = ClaimStatus::Claimed;
    } else if (g.status == ReserveStatus::InsufficientCredits) {
        // The balance cannot top it up: the refiller does not ask again for
        // every claim, each refused the same way (claims go on from what it has).
        s.lowRefused = true;
        s.lowRefusedAtMs = clock_.steadyMs();
        result = "refused";
        st = ClaimStatus::NoSlice;
    } else {
        // A call that timed out may still be applied when the database
        // answers again: the slice is released when it goes, whatever it holds.
        s.inLedger = true;
    }
    metrics_.add(Metrics::series("trollproxy_slice_refills_total", {{"result", result}}));
    // Retired meanwhile: what the refill added goes back with it.
    if (auto it = byId_.find(s.id); s.retired && it != byId_.end())
        releaseIfIdle(it->second, ids);
    return st;
}

bool SliceBook::extend(SliceClaim& c, Money extra) {
    if (!c.slice || extra.nanos <= 0)
        return c.slice != nullptr;
    std::lock_guard lock(mutex_);
    if (c.slice->free() < extra.nanos)
        return false;
    c.slice->claimed += extra.nanos;
    c.amount.nanos += extra.nanos;
    return true;
}

void SliceBook::finish(SliceClaim& c, Money drawn, bool pending) {
    if (!c.slice)
        return;
    std::vector<std::string> ids;
    {
        std::lock_guard lock(mutex_);
        Slice& s = *c.slice;
        s.claimed -= c.amount.nanos;
        s.drawn += std::clamp<std::int64_t>(drawn.nanos, 0, c.amount.nanos);
        s.pending += pending ? 1 : 0;
        s.lastUseMs = clock_.steadyMs();
        releaseIfIdle(c.slice, ids);
    }
    c.slice.reset();
    c.amount = Money{};
    releaseInLedger(ids);
}

void SliceBook::settled(const std::string& sliceId) {
    if (sliceId.empty())
        return;
    std::vector<std::string> ids;
    {
        std::lock_guard lock(mutex_);
        auto it = byId_.find(sliceId);
        if (it == byId_.end())
            return; // a slice of an earlier process
        --it->second->pending;
        releaseIfIdle(it->second, ids);
    }
    releaseInLedger(ids);
}

void SliceBook::releaseIfIdle(std::shared_ptr<Slice> s, std::vector<std::string>& ids) {
    // `s` is a copy: callers pass byId_'s own pointer, which the erase destroys
    // (and the slice with it, when byOwner_ has moved on to a newer slice).
    if (!s || !s->retired || s->claimed != 0 || s->pending != 0 || s->refills != 0 ||
        !byId_.erase(s->id))
        return;
    if (s->inLedger)
        ids.push_back(s->id);
}

void SliceBook::releaseInLedger(const std::vector<std::string>& ids) {
    for (const auto& id : ids) {
        if (ledger_.release(id)) // else the hold expires, or goes back at the next start
            metrics_.add("trollproxy_slices_released_total");
        else
            metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "release"}}));
    }
}

void SliceBook::tick(const SlicePolicy& policy) {
    std::vector<std::string> ids;
    std::vector<std::shared_ptr<Slice>> renew;
    {
        std::lock_guard lock(mutex_);
        const std::int64_t now = clock_.steadyMs();
        for (const auto& s : heldSlices()) {
            if (!s->retired && s->claimed == 0 && s->pending == 0 && s->refills == 0 &&
                now - s->lastUseMs >= policy.idleMs)
                retire(*s, false);
            releaseIfIdle(s, ids);
            if (byId_.count(s->id) && s->inLedger && now >= s->renewAtMs)
                renew.push_back(s);
        }
        // A user's retired slice is replaced at their next request once its
        // pause after a refusal is over: forget it (byId_ keeps it while held).
        std::erase_if(byOwner_, [now](const auto& owner) {
            return owner.second->retired && now - owner.second->retiredAtMs >= kRetryAfterRefusalMs;
        });
    }
    releaseInLedger(ids);
    for (const auto& s : renew) {
        auto r = ledger_.renewHold(s->id, clock_.wallMs() + policy.ttlMs);
        std::lock_guard lock(mutex_);
        if (r) {
            s->renewAtMs = clock_.steadyMs() + policy.ttlMs / 3;
        } else if (r.error().code == ErrorCode::NotFound) {
            // Swept: the ledger gave it back. Nothing more is claimed from it;
            // charges still drawing on it are taken from the balance.
            retire(*s, false);
            s->granted = s->drawn + s->claimed;
        }
    }
    publish();
}

void SliceBook::publish() {
    std::int64_t n = 0, held = 0;
    {
        std::lock_guard lock(mutex_);
        for (const auto& [id, s] : byId_) {
            n += s->inLedger ? 1 : 0;
            held += s->granted - s->drawn;
        }
    }
    metrics_.set("trollproxy_slices_outstanding", static_cast<double>(n));
    metrics_.set("trollproxy_slices_held_usd", Money{held}.toUsdDouble());
}

std::size_t SliceBook::owners() const {
    std::lock_guard lock(mutex_);
    return byOwner_.size();
}

std::int64_t SliceBook::outstanding() const {
    std::lock_guard lock(mutex_);
    return static_cast<std::int64_t>(byId_.size());
}

void SliceBook::start(const SlicePolicy& policy) {
    std::lock_guard lock(mutex_);
    if (refiller_.joinable() || stopping_)
        return;
    policy_ = policy;
    refiller_ = std::thread([this] { refillLoop(); });
}

void SliceBook::setPolicy(const SlicePolicy& policy) {
    std::lock_guard lock(mutex_);
    policy_ = policy;
}

void SliceBook::refillLoop() {
    std::unique_lock lock(mutex_);
    for (;;) {
        wake_.wait(lock, [this] { return stopping_ || !lowSlices_.empty(); });
        if (stopping_)
            return;
        std::shared_ptr<Slice> s = std::move(lowSlices_.back());
        lowSlices_.pop_back();
        s->lowQueued = false;
        if (s->retired || s->free() >= s->lowMark() || policy_.max.nanos <= 0)
            continue;
        // Top up to the target; a crumb is not worth it. (A reload may have
        // made slices smaller than the target: refill() bounds by the policy.)
        const SlicePolicy policy = policy_;
        const Money need{std::clamp<std::int64_t>(s->lowMark(), 1, policy.max.nanos)};
        lock.unlock();
        refill(*s, need, policy);
        lock.lock();
    }
}

void SliceBook::stop() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    if (refiller_.joinable())
        refiller_.join();
    std::vector<std::string> ids;
    {
        std::lock_guard lock(mutex_);
        for (const auto& s : heldSlices()) {
            s->retired = true;
            releaseIfIdle(s, ids);
        }
    }
    releaseInLedger(ids);
}

} // namespace trollproxy::internal
