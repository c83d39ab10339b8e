// CallerAuth: who is calling, from the request's API key, with the fail-open cache.
#pragma once

#include <mutex>
#include <string>
#include <unordered_map>

#include "trollproxy/ledger.hpp"
#include "trollproxy/proxy.hpp"
#include "proxy/metrics.hpp"
#include "proxy/outcome.hpp"

namespace trollproxy::internal {

/// A header's value by name, in any case; "" when absent.
std::string headerValue(const HttpRequest& request, std::string_view lowerName);

/// Authenticates callers against the ledger. When the ledger is down and the
/// failure mode is fail_open, keys seen before are still accepted. Thread-safe.
class CallerAuth {
public:
    CallerAuth(CreditLedger& ledger, Metrics& metrics) : ledger_(ledger), metrics_(metrics) {}

    /// Ok with `account` set, or the refusal (401, 403, 400 for a header with
    /// a control character, 503 when the ledger cannot say).
    Outcome authenticate(const HttpRequest& request, LedgerFailureMode mode, Account& account);

private:
    static constexpr std::size_t kMaxCached = 100'000;

    CreditLedger& ledger_;
    Metrics& metrics_;
    std::mutex cacheMutex_;
    std::unordered_map<std::string, Account> cache_; // fail_open only
};

} // namespace trollproxy::internal
