// CallerAuth: the API key from Authorization or x-api-key, looked up in the ledger.
#include "proxy/caller_auth.hpp"

#include <algorithm>
#include <cctype>
#include <cstdint>

namespace trollproxy::internal {

std::string headerValue(const HttpRequest& r, std::string_view name) {
    for (const auto& [k, v] : r.headers) {
        if (k.size() == name.size() &&
            std::equal(k.begin(), k.end(), name.begin(), [](char a, char b) {
                return std::tolower(static_cast<unsigned char>(a)) == b;
            }))
            return v;
    }
    return {};
}

namespace {

std::string clientKey(const HttpRequest& r) {
    std::string auth = headerValue(r, "authorization");
    if (auth.size() > 7 &&
        (auth.compare(0, 7, "Bearer ") == 0 || auth.compare(0, 7, "bearer ") == 0))
        return auth.substr(7);
    return headerValue(r, "x-api-key");
}

Outcome refusalFor(AuthStatus status) {
    switch (status) {
    case AuthStatus::Authorized:
        return {};
    case AuthStatus::KeyInvalid:
        return refuse(OutcomeKind::InvalidKey, "invalid API key");
    case AuthStatus::KeyRevoked:
        return refuse(OutcomeKind::RevokedKey, "this API key has been revoked");
    case AuthStatus::KeyExpired:
        return refuse(OutcomeKind::ExpiredKey, "this API key has expired");
    case AuthStatus::MigrationRequired:
        return refuse(OutcomeKind::MigrationRequired, "account migration required");
    case AuthStatus::LedgerUnavailable:
        break;
    }
    return refuse(OutcomeKind::LedgerUnavailable,
                  "billing is temporarily unavailable; retry later");
}

} // namespace

std::optional<Account> CallerAuth::remembered(const std::string& key, std::int64_t maxAgeMs) {
    std::lock_guard lock(cacheMutex_);
    auto it = cache_.find(key);
    if (it == cache_.end() || clock_.steadyMs() - it->second.checkedAtMs > maxAgeMs)
        return std::nullopt;
    return it->second.account;
}

void CallerAuth::remember(const std::string& key, const Account& account) {
    std::lock_guard lock(cacheMutex_);
    if (cache_.size() >= kMaxCached && !cache_.count(key))
        cache_.clear(); // rare: starts over rather than grow
    cache_[key] = Known{account, clock_.steadyMs()};
}

void CallerAuth::forget(const std::string& key) {
    std::lock_guard lock(cacheMutex_);
    cache_.erase(key);
}

Outcome CallerAuth::authenticate(const HttpRequest& http, const AuthPolicy& policy,
                                 Account& account) {
    for (const auto& [k, v] : http.headers) {
        if (v.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos)
            return refuse(OutcomeKind::BadHeader, "header " + k + " contains a control character");
    }
    std::string key = clientKey(http);
    if (key.empty())
        return refuse(OutcomeKind::MissingKey,
                      "missing API key (Authorization: Bearer KEY or x-api-key)");
    const bool remembers = policy.cacheMs > 0 || policy.failureMode == LedgerFailureMode::FailOpen;
    if (policy.cacheMs > 0) {
        if (auto known = remembered(key, policy.cacheMs)) {
            account = std::move(*known);
            return {};
        }
    }
    // The ledger is down: a key accepted before stays accepted (a revocation
    // cannot be seen until it is back), without waiting for a lookup to fail.
    const bool down = ledgerUp_ && !ledgerUp_->load(std::memory_order_relaxed);
    if (down && remembers) {
        if (auto known = remembered(key, INT64_MAX)) {
            account = std::move(*known);
            return {};
        }
    }
    AuthOutcome auth = ledger_.authenticate(key);
    if (auth.status == AuthStatus::LedgerUnavailable) {
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "authenticate"}}));
        auto known = remembers ? remembered(key, INT64_MAX) : std::nullopt;
        if (!known)
            return refusalFor(auth.status);
        account = std::move(*known);
        return {};
    }
    if (auth.status != AuthStatus::Authorized) {
        forget(key);
        return refusalFor(auth.status);
    }
    if (remembers)
        remember(key, auth.account);
    account = std::move(auth.account);
    return {};
}

} // namespace trollproxy::internal
