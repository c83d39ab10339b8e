// Helpers shared by the ledger tests: both roles of a ledger, temporary files, unique names,
// amounts, and the conformance suites' ledger, users, holds and charges.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <unistd.h>
#include <vector>

#include "trollproxy/ledger.hpp"
#include "trollproxy/ledger_admin.hpp"

namespace trollproxy::test {

/// One ledger URI opened in both roles, openLedger() and openLedgerAdmin(), so a
/// test can charge and inspect through one pointer. Each call goes to the object
/// of its role (two connection pools on one database, as a server and
/// trollproxy-admin have).
class BothRoles final : public CreditLedger, public LedgerAdmin {
public:
    static Result<std::unique_ptr<BothRoles>> open(std::string_view uri,
                                                   const LedgerOptions& options = {}) {
        auto ledger = openLedger(uri, options);
        if (!ledger)
            return ledger.error();
        auto admin = openLedgerAdmin(uri, options);
        if (!admin)
            return admin.error();
        return std::unique_ptr<BothRoles>(new BothRoles(std::move(*ledger), std::move(*admin)));
    }

    AuthOutcome authenticate(std::string_view k) override { return ledger_->authenticate(k); }
    ReserveStatus reserve(const HoldRequest& h) override { return ledger_->reserve(h); }
    SettleOutcome settle(const Charge& c) override { return ledger_->settle(c); }
    SliceGrant reserveSlice(const SliceRequest& r) override { return ledger_->reserveSlice(r); }
    std::vector<SettleOutcome> settleBatch(std::span<const Charge> charges) override {
        return ledger_->settleBatch(charges);
    }
    Result<void> release(std::string_view id) override { return ledger_->release(id); }
    Result<void> renewHold(std::string_view id, std::int64_t ms) override {
        return ledger_->renewHold(id, ms);
    }
    Result<std::int64_t> sweepExpiredHolds(std::int64_t ms) override {
        return ledger_->sweepExpiredHolds(ms);
    }
    Result<std::int64_t> releaseHolds(std::string_view prefix) override {
        return ledger_->releaseHolds(prefix);
    }
    Result<std::string> responseOwner(std::string_view id) override {
        return ledger_->responseOwner(id);
    }
    Result<void> recordRequest(const LogEntry& e) override { return ledger_->recordRequest(e); }
    bool ping() override { return ledger_->ping(); }

    Result<void> addUser(std::string_view n) override { return admin_->addUser(n); }
    Result<std::string> addKey(std::string_view n) override { return admin_->addKey(n); }
    Result<void> revokeKey(std::string_view k) override { return admin_->revokeKey(k); }
    Result<void> credit(std::string_view n, BalanceField f, Money m) override {
        return admin_->credit(n, f, m);
    }
    Result<Balance> balance(std::string_view n) override { return admin_->balance(n); }
    Result<std::vector<LogEntry>> usage(std::string_view n, std::int64_t last) override {
        return admin_->usage(n, last);
    }
    Result<Money> totalShortfall() override { return admin_->totalShortfall(); }

private:
    BothRoles(std::unique_ptr<CreditLedger> ledger, std::unique_ptr<LedgerAdmin> admin)
        : ledger_(std::move(ledger)), admin_(std::move(admin)) {}

    std::unique_ptr<CreditLedger> ledger_;
    std::unique_ptr<LedgerAdmin> admin_;
};

/// A fresh empty directory under $TMPDIR, removed with its files when it goes away.
class TempDir {
public:
    TempDir() {
        const char* base = std::getenv("TMPDIR");
        std::string tmpl = std::string(base && *base ? base : "/tmp") + "/trollproxy-ledger-XXXXXX";
        if (mkdtemp(tmpl.data()))
            path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        if (!path_.empty())
            std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

/// A name no other test case (or run) uses, since a MongoDB database is shared.
inline std::string uniqueName(const std::string& stem) {
    return stem + "-" + newApiKey().substr(12, 10);
}

/// USD text to Money; the tests only pass valid literals.
inline Money usd(const char* text) {
    auto m = Money::parse(text);
    return m ? *m : Money{-1};
}

// The conformance suites (ledger_conformance.cpp, slice_conformance.cpp): one
// ledger from TROLLPROXY_TEST_LEDGER_URI, public interface only, and users and
// request ids of their own in every case (a MongoDB database is shared by a run).

/// The ledger under test: TROLLPROXY_TEST_LEDGER_URI, else a temporary SQLite file.
inline std::string ledgerUri() {
    const char* env = std::getenv("TROLLPROXY_TEST_LEDGER_URI");
    if (env && *env)
        return env;
    static TempDir dir;
    // TROLLPROXY_TEST_SQLITE_QUERY: URI options, e.g. synchronous=full.
    const char* query = std::getenv("TROLLPROXY_TEST_SQLITE_QUERY");
    return "sqlite:" + dir.file("conformance.db") +
           (query && *query ? std::string("?") + query : "");
}

inline bool isMongo() {
    return ledgerUri().rfind("mongodb", 0) == 0;
}

/// A key id as a charge carries it: digest-shaped, so every backend stores it as it is.
inline std::string keyIdOf(const std::string& user) {
    static const char kHex[] = "0123456789abcdef";
    std::string id;
    for (unsigned char ch : user) {
        id += kHex[ch >> 4];
        id += kHex[ch & 15];
    }
    id.resize(64, '0');
    return id;
}

/// CongoDB, the MongoDB-protocol test server, cannot store a string `_id` (only
/// ObjectIds): its runner sets TROLLPROXY_TEST_OBJECTID_IDS=1. Then users are named
/// "oid:<24 hex>" (how the backend names an ObjectId `_id`), and the part needing
/// `user_keys` (whose `_id` is the raw key) is left to a real mongod.
inline bool objectIdsOnly() {
    const char* env = std::getenv("TROLLPROXY_TEST_OBJECTID_IDS");
    return env && *env == '1';
}

/// A fresh user name every backend can store.
inline std::string userName(const char* stem) {
    if (objectIdsOnly())
        return "oid:" + newApiKey().substr(12, 24);
    return uniqueName(stem);
}

/// The request path and administration of the ledger under test, behind one pointer.
inline std::unique_ptr<BothRoles> openTestLedger() {
    auto l = BothRoles::open(ledgerUri());
    if (!l)
        FAIL("cannot open ledger ", ledgerUri(), ": ", l.error().message);
    return std::move(l).value();
}

inline std::int64_t nowMs() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

/// MongoDB stores USD as doubles: allow one nano-dollar per operation there.
inline std::int64_t slack(std::int64_t operations) {
    return isMongo() ? operations : 0;
}

#define CHECK_MONEY(actual, expected, ops)                                                         \
    do {                                                                                           \
        std::int64_t a_ = (actual).nanos, e_ = (expected).nanos;                                   \
        INFO("actual ", Money{a_}.toString(), " expected ", Money{e_}.toString());                 \
        CHECK(std::llabs(a_ - e_) <= ::trollproxy::test::slack(ops));                              \
    } while (0)

inline std::string makeUser(LedgerAdmin& l, const char* stem) {
    std::string name = userName(stem);
    REQUIRE(l.addUser(name));
    return name;
}

inline void give(LedgerAdmin& l, const std::string& user, BalanceField field, const char* amount) {
    auto r = l.credit(user, field, usd(amount));
    REQUIRE_MESSAGE(r, r.error().message);
}

inline Balance balanceOf(LedgerAdmin& l, const std::string& user) {
    auto b = l.balance(user);
    REQUIRE_MESSAGE(b, b.error().message);
    return *b;
}

/// A request's hold, expiring in an hour unless told.
inline HoldRequest hold(const std::string& id, const std::string& user, Pool pool,
                        const char* amount, std::int64_t expiresAtMs = 0) {
    return HoldRequest{id, user, pool, usd(amount),
                       expiresAtMs ? expiresAtMs : nowMs() + 3'600'000};
}

/// A successful request's charge (no slice: Charge::holdId empty).
inline Charge charge(const std::string& id, const std::string& user, Pool pool, const char* cost,
                     Usage usage = {100, 20, 30, 40, false}) {
    Charge c;
    c.requestId = id;
    c.userId = user;
    c.keyId = keyIdOf(user);
    c.model = "test-model";
    c.pool = pool;
    c.usage = usage;
    c.cost = usd(cost);
    c.statusCode = 200;
    c.latencyMs = 12;
    c.createdAtMs = nowMs();
    return c;
}

inline std::vector<LogEntry> logOf(LedgerAdmin& l, const std::string& user,
                                   std::int64_t last = 1000) {
    auto u = l.usage(user, last);
    REQUIRE_MESSAGE(u, u.error().message);
    return *u;
}

} // namespace trollproxy::test
