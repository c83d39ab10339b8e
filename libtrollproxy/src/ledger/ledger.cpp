// Picks a ledger backend from a URI, hands out its two roles, and makes API keys.
#include "trollproxy/ledger.hpp"
#include "trollproxy/ledger_admin.hpp"

#include <cstdlib>
#include <sys/random.h>

#include "ledger/backend.hpp"
#include "ledger/sqlite_ledger.hpp"
#if defined(TROLLPROXY_HAVE_MONGODB) && __has_include("ledger/mongo_ledger.hpp")
#include "ledger/mongo_ledger.hpp"
#define TROLLPROXY_MONGO_BACKEND 1
#endif

namespace trollproxy::internal {

Result<std::unique_ptr<LedgerBackend>> openLedgerBackend(std::string_view uri,
                                                         const LedgerOptions& options) {
    if (uri.rfind("sqlite:", 0) == 0) {
        std::string path(uri.substr(7));
        bool fullSync = false;
        if (auto q = path.find('?'); q != std::string::npos) {
            std::string query = path.substr(q + 1);
            path.resize(q);
            if (query == "synchronous=full")
                fullSync = true;
            else if (query != "synchronous=normal")
                return Error{ErrorCode::InvalidArgument,
                             "sqlite: unknown option \"" + query +
                                 "\" (use ?synchronous=full or ?synchronous=normal)"};
        }
        if (path.empty())
            return Error{ErrorCode::InvalidArgument, "sqlite: needs a file path (sqlite:PATH)"};
        return openSqliteLedger(path, options, fullSync);
    }
    if (uri.rfind("mongodb://", 0) == 0 || uri.rfind("mongodb+srv://", 0) == 0) {
#ifdef TROLLPROXY_MONGO_BACKEND
        return openMongoLedger(uri, options);
#else
        return Error{ErrorCode::InvalidArgument, "this build has no MongoDB support"};
#endif
    }
    return Error{ErrorCode::InvalidArgument, "unknown ledger URI \"" + std::string(uri) +
                                                 "\" (use sqlite:PATH or mongodb://...)"};
}

} // namespace trollproxy::internal

namespace trollproxy {

std::vector<SettleOutcome> CreditLedger::settleBatch(std::span<const Charge> charges) {
    std::vector<SettleOutcome> out;
    out.reserve(charges.size());
    for (const Charge& c : charges)
        out.push_back(settle(c));
    return out;
}

namespace {

template <typename Role>
Result<std::unique_ptr<Role>> openRole(std::string_view uri, const LedgerOptions& options) {
    auto backend = internal::openLedgerBackend(uri, options);
    if (!backend)
        return backend.error();
    return std::unique_ptr<Role>(std::move(*backend));
}

} // namespace

Result<std::unique_ptr<CreditLedger>> openLedger(std::string_view uri,
                                                 const LedgerOptions& options) {
    return openRole<CreditLedger>(uri, options);
}

Result<std::unique_ptr<LedgerAdmin>> openLedgerAdmin(std::string_view uri,
                                                     const LedgerOptions& options) {
    return openRole<LedgerAdmin>(uri, options);
}

std::string defaultLedgerUri() {
    const char* mongo = std::getenv("MONGODB_URI");
    return mongo && *mongo ? std::string(mongo) : std::string("sqlite:trollproxy.db");
}

std::string newApiKey() {
    unsigned char bytes[32];
    std::size_t got = 0;
    while (got < sizeof bytes) {
        ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
        if (n > 0)
            got += static_cast<std::size_t>(n);
    }
    static const char kHex[] = "0123456789abcdef";
    std::string key = "sk-trollllm-";
    for (unsigned char b : bytes) {
        key += kHex[b >> 4];
        key += kHex[b & 15];
    }
    return key;
}

} // namespace trollproxy
