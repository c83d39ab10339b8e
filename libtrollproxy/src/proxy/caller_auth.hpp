// CallerAuth: who is calling, from the request's API key, with the fail-open cache.
#pragma once

#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "proxy/metrics.hpp"
#include "proxy/outcome.hpp"
#include "trollproxy/clock.hpp"
#include "trollproxy/config.hpp"
#include "trollproxy/ledger.hpp"
#include "trollproxy/proxy.hpp"

namespace trollproxy::internal {

/// A header's value by name, in any case; "" when absent.
std::string headerValue(const HttpRequest& request, std::string_view lowerName);

/// How CallerAuth trusts what it learned before.
struct AuthPolicy {
    LedgerFailureMode failureMode = LedgerFailureMode::FailClosed;
    /// A key the ledger accepted less than this long ago is accepted without
    /// asking again (auth_cache_ms; 0: always ask).
    std::int64_t cacheMs = 0;
};

/// The policy the settings give.
inline AuthPolicy authPolicy(const ProxySettings& s) {
    return {s.ledgerFailureMode, s.authCacheMs};
}

/// Authenticates callers against the ledger, remembering keys it accepted:
/// for `cacheMs` they need no ledger call, and while the ledger is down they
/// are still accepted (under fail_closed their requests are then served only
/// from budget slices; nothing else can be held). When the last ping said the
/// ledger is down, a remembered key does not wait for a lookup to time out. Only accepted keys are
/// remembered, at most kMaxCached of them, so a flood of bad keys costs no memory. Thread-safe.
class CallerAuth {
public:
    CallerAuth(CreditLedger& ledger, Metrics& metrics, const Clock& clock,
               const std::atomic<bool>* ledgerUp = nullptr)
        : ledger_(ledger), metrics_(metrics), clock_(clock), ledgerUp_(ledgerUp) {}

    /// Ok with `account` set, or the refusal (401, 403, 400 for a header with
    /// a control character, 503 when the ledger cannot say).
    Outcome authenticate(const HttpRequest& request, const AuthPolicy& policy, Account& account);

private:
    static constexpr std::size_t kMaxCached = 100'000;
    struct Known {
        Account account;
        std::int64_t checkedAtMs = 0; // steady
    };

    /// The remembered account of `key` if it was checked within `maxAgeMs`.
    std::optional<Account> remembered(const std::string& key, std::int64_t maxAgeMs);
    void remember(const std::string& key, const Account& account);
    void forget(const std::string& key);

    CreditLedger& ledger_;
    Metrics& metrics_;
    const Clock& clock_;
    const std::atomic<bool>* ledgerUp_; // the last ping's answer, when known
    std::mutex cacheMutex_;
    std::unordered_map<std::string, Known> cache_;
};

} // namespace trollproxy::internal
