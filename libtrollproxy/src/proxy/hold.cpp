// Hold: reserve, renew while a stream runs, release when nothing is served.
#include "proxy/hold.hpp"

namespace trollproxy::internal {

ReserveStatus Hold::reserve(const HoldRequest& request) {
    requestId_ = request.requestId;
    ReserveStatus status = ledger_.reserve(request);
    held_ = status == ReserveStatus::Reserved;
    if (status == ReserveStatus::LedgerUnavailable)
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "reserve"}}));
    renewAtMs_ = clock_.steadyMs() + (request.expiresAtMs - clock_.wallMs()) / 3;
    return status;
}

void Hold::release() {
    if (!held_)
        return;
    held_ = false;
    if (!ledger_.release(requestId_)) // the sweep returns it once it expires
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "release"}}));
}

void Hold::renewIfDue(std::int64_t ttlMs) {
    if (!held_ || clock_.steadyMs() < renewAtMs_)
        return;
    renewAtMs_ = clock_.steadyMs() + ttlMs / 3;
    if (!ledger_.renewHold(requestId_, clock_.wallMs() + ttlMs))
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "renew"}}));
}

} // namespace trollproxy::internal
