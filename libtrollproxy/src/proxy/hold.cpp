// Hold: a slice's claim or a ledger hold; renew while a stream runs, release when nothing is
// served.
#include "proxy/hold.hpp"

#include <algorithm>

namespace trollproxy::internal {

void DoubtfulHolds::add(const std::string& requestId, std::int64_t nowMs) {
    std::lock_guard lock(mutex_);
    since_.emplace(requestId, nowMs);
}

void DoubtfulHolds::retry(CreditLedger& ledger, Metrics& metrics, std::int64_t nowMs) {
    std::vector<std::string> ids;
    {
        std::lock_guard lock(mutex_);
        for (auto it = since_.begin(); it != since_.end();) {
            ids.push_back(it->first);
            it = nowMs - it->second > kRetryForMs ? since_.erase(it) : std::next(it);
        }
    }
    for (const auto& id : ids) {
        if (!ledger.release(id))
            metrics.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "release"}}));
    }
}

ReserveStatus Hold::reserve(const HoldRequest& request, const SlicePolicy& policy) {
    requestId_ = request.requestId;
    amount_ = request.amount;
    if (policy.max.nanos > 0) {
        switch (slices_.claim(request.userId, request.pool, request.amount, policy, claim_)) {
        case ClaimStatus::Claimed:
            held_ = true;
            return ReserveStatus::Reserved;
        case ClaimStatus::LedgerUnavailable:
            return ReserveStatus::LedgerUnavailable;
        case ClaimStatus::NoSlice:
            metrics_.add("trollproxy_slice_fallbacks_total");
            break; // the request holds its own
        }
    }
    ReserveStatus status = ledger_.reserve(request);
    held_ = status == ReserveStatus::Reserved;
    if (status == ReserveStatus::LedgerUnavailable) {
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "reserve"}}));
        doubtful_.add(request.requestId, clock_.wallMs());
    }
    renewAtMs_ = clock_.steadyMs() + (request.expiresAtMs - clock_.wallMs()) / 3;
    return status;
}

bool Hold::covers(Money cost) {
    if (!held_)
        return false;
    if (claim_.slice)
        return cost.nanos <= claim_.amount.nanos ||
               slices_.extend(claim_, Money{cost.nanos - claim_.amount.nanos});
    return cost.nanos <= amount_.nanos;
}

void Hold::drawOn(Charge& charge) {
    if (!claim_.slice)
        return;
    drawn_ = Money{std::min(std::max<std::int64_t>(charge.cost.nanos, 0), claim_.amount.nanos)};
    charge.holdId = claim_.sliceId();
    charge.holdShare = drawn_;
}

void Hold::release() {
    if (!held_)
        return;
    held_ = false;
    if (claim_.slice) {
        slices_.finish(claim_, Money{}, false);
        return;
    }
    if (!ledger_.release(requestId_)) // the sweep returns it once it expires
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "release"}}));
}

void Hold::renewIfDue(std::int64_t ttlMs) {
    if (!held_ || claim_.slice || clock_.steadyMs() < renewAtMs_)
        return;
    renewAtMs_ = clock_.steadyMs() + ttlMs / 3;
    if (!ledger_.renewHold(requestId_, clock_.wallMs() + ttlMs))
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "renew"}}));
}

void Hold::settled() {
    if (held_ && claim_.slice)
        slices_.finish(claim_, drawn_, true);
    held_ = false;
}

} // namespace trollproxy::internal
