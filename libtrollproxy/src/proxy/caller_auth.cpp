// CallerAuth: the API key from Authorization or x-api-key, looked up in the ledger.
#include "proxy/caller_auth.hpp"

#include <algorithm>
#include <cctype>

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
    return refuse(OutcomeKind::LedgerUnavailable, "billing is temporarily unavailable; retry later");
}

} // namespace

Outcome CallerAuth::authenticate(const HttpRequest& http, LedgerFailureMode mode,
                                 Account& account) {
    for (const auto& [k, v] : http.headers) {
        if (v.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos)
            return refuse(OutcomeKind::BadHeader, "header " + k + " contains a control character");
    }
    std::string key = clientKey(http);
    if (key.empty())
        return refuse(OutcomeKind::MissingKey,
                      "missing API key (Authorization: Bearer KEY or x-api-key)");
    AuthOutcome auth = ledger_.authenticate(key);
    const bool failOpen = mode == LedgerFailureMode::FailOpen;
    if (auth.status == AuthStatus::LedgerUnavailable) {
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "authenticate"}}));
        std::lock_guard lock(cacheMutex_);
        if (auto it = cache_.find(key); failOpen && it != cache_.end())
            auth = {AuthStatus::Authorized, it->second};
    }
    if (auth.status != AuthStatus::Authorized)
        return refusalFor(auth.status);
    if (failOpen) {
        std::lock_guard lock(cacheMutex_);
        if (cache_.size() < kMaxCached)
            cache_[key] = auth.account;
    }
    account = std::move(auth.account);
    return {};
}

} // namespace trollproxy::internal
