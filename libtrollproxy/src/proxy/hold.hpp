// Hold: one request's reservation in the ledger, released unless it was settled.
#pragma once

#include <string>

#include "proxy/metrics.hpp"
#include "trollproxy/clock.hpp"
#include "trollproxy/ledger.hpp"

namespace trollproxy::internal {

/// Owns a request's hold from reserve() to its settlement. Its destructor
/// returns a hold still outstanding to the pool, so no path that serves
/// nothing can leave money locked. Not thread-safe: one request's thread.
class Hold {
public:
    Hold(CreditLedger& ledger, Metrics& metrics, const Clock& clock)
        : ledger_(ledger), metrics_(metrics), clock_(clock) {}
    ~Hold() { release(); }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;

    /// Takes the amount out of the pool. Held only when Reserved.
    ReserveStatus reserve(const HoldRequest& request);

    /// Whether money is held now.
    bool held() const { return held_; }

    /// Returns the hold unspent (nothing was served). Failures leave it to the sweep.
    void release();

    /// A long stream keeps its hold: moves the expiry `ttlMs` ahead once a
    /// third of it has passed.
    void renewIfDue(std::int64_t ttlMs);

    /// The ledger replaced the hold by the charge (or the charge was journalled).
    void settled() { held_ = false; }

private:
    CreditLedger& ledger_;
    Metrics& metrics_;
    const Clock& clock_;
    std::string requestId_;
    bool held_ = false;
    std::int64_t renewAtMs_ = 0; // steady clock
};

} // namespace trollproxy::internal
