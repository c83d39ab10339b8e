// SqliteLedger: every money change runs in an IMMEDIATE transaction (request-path writes grouped
// by GroupCommit, each in its own savepoint), so processes sharing the
// file are serialised by SQLite's write lock and a balance can never go below zero.
#include "ledger/sqlite_ledger.hpp"

#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>

#include <sqlite3.h>

#include "ledger/sqlite_db.hpp"
#include "ledger/sqlite_group_commit.hpp"
#include "ledger/sqlite_secrets.hpp"
#include "ledger/sqlite_steps.hpp"

namespace trollproxy::internal {

namespace {

using sqlite::insertLog;
using sqlite::releaseIn;
using sqlite::reserveIn;
using sqlite::settleIn;

const char* kSchema = R"(
CREATE TABLE IF NOT EXISTS usersNew (
  id TEXT PRIMARY KEY, apiKey TEXT UNIQUE, isActive INTEGER NOT NULL DEFAULT 1,
  role TEXT NOT NULL DEFAULT 'user', migration INTEGER NOT NULL DEFAULT 1, expiresAt INTEGER,
  credits INTEGER NOT NULL DEFAULT 0 CHECK (credits >= 0),
  creditsUsed INTEGER NOT NULL DEFAULT 0,
  refCredits INTEGER NOT NULL DEFAULT 0 CHECK (refCredits >= 0),
  creditsNew INTEGER NOT NULL DEFAULT 0 CHECK (creditsNew >= 0),
  creditsNewUsed INTEGER NOT NULL DEFAULT 0, tokensUserNew INTEGER NOT NULL DEFAULT 0,
  totalInputTokens INTEGER NOT NULL DEFAULT 0, totalOutputTokens INTEGER NOT NULL DEFAULT 0,
  createdAt INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS user_keys (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, isActive INTEGER NOT NULL DEFAULT 1,
  tokensUsed INTEGER NOT NULL DEFAULT 0, requestsCount INTEGER NOT NULL DEFAULT 0,
  createdAt INTEGER NOT NULL, lastUsedAt INTEGER, expiresAt INTEGER);
CREATE TABLE IF NOT EXISTS holds (
  requestId TEXT PRIMARY KEY, userId TEXT NOT NULL, pool TEXT NOT NULL,
  fromCredits INTEGER NOT NULL, fromRefCredits INTEGER NOT NULL, fromCreditsNew INTEGER NOT NULL,
  expiresAtMs INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS holds_expiry ON holds (expiresAtMs);
CREATE TABLE IF NOT EXISTS request_logs (
  requestId TEXT PRIMARY KEY, userId TEXT, userKeyId TEXT, model TEXT,
  inputTokens INTEGER, outputTokens INTEGER, cacheWriteTokens INTEGER, cacheHitTokens INTEGER,
  creditsCost INTEGER, shortfall INTEGER, tokensUsed INTEGER, statusCode INTEGER,
  latencyMs INTEGER, isSuccess INTEGER, creditType TEXT, pool TEXT, estimated INTEGER,
  createdAt INTEGER);
CREATE INDEX IF NOT EXISTS request_logs_user ON request_logs (userId, createdAt);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
)";

std::int64_t nowMs() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

Error unavailable(Connection& c) {
    return Error{ErrorCode::Unavailable, "ledger database: " + c.lastError()};
}

class SqliteLedger final : public LedgerBackend {
public:
    SqliteLedger(std::string path, const LedgerOptions& o, bool fullSync)
        : pool_(std::move(path), o.timeoutMs, fullSync),
          commits_(pool_, std::chrono::milliseconds(o.timeoutMs)) {}

    Result<void> init() {
        std::string err;
        auto c = pool_.take(&err);
        if (!c)
            return Error{ErrorCode::Unavailable, err};
        if ((*c)->exec(kSchema) != SQLITE_OK)
            return Error{ErrorCode::Unavailable,
                         "cannot create the ledger schema: " + (*c)->lastError()};
        if (auto r = addResponseIdColumn(**c); !r)
            return r;
        return migrateKeysToDigests(**c);
    }

    AuthOutcome authenticate(std::string_view apiKey) override {
        auto c = pool_.take(nullptr);
        if (!c)
            return {AuthStatus::LedgerUnavailable, {}};
        if (apiKey.empty())
            return {AuthStatus::KeyInvalid, {}};
        std::string key = keyDigest(apiKey); // only digests are stored
        std::int64_t now = nowMs();
        Account acct;
        acct.keyId = key;
        {
            Stmt s = (*c)->prepare("SELECT id FROM usersNew WHERE apiKey = ?");
            s.bind(1, key);
            int rc = s.step();
            if (rc == SQLITE_ROW)
                acct.userId = s.text(0);
            else if (rc != SQLITE_DONE)
                return {AuthStatus::LedgerUnavailable, {}};
        }
        if (acct.userId.empty()) {
            Stmt s = (*c)->prepare("SELECT name, isActive, expiresAt FROM user_keys WHERE id = ?");
            s.bind(1, key);
            int rc = s.step();
            if (rc == SQLITE_DONE)
                return {AuthStatus::KeyInvalid, {}};
            if (rc != SQLITE_ROW)
                return {AuthStatus::LedgerUnavailable, {}};
            if (!s.integer(1))
                return {AuthStatus::KeyRevoked, {}};
            if (!s.isNull(2) && s.integer(2) < now)
                return {AuthStatus::KeyExpired, {}};
            acct.userId = s.text(0);
        }
        Stmt u =
            (*c)->prepare("SELECT isActive, role, migration, expiresAt FROM usersNew WHERE id = ?");
        u.bind(1, acct.userId);
        int rc = u.step();
        if (rc == SQLITE_DONE)
            return {AuthStatus::KeyInvalid, {}};
        if (rc != SQLITE_ROW)
            return {AuthStatus::LedgerUnavailable, {}};
        acct.admin = u.text(1) == "admin";
        if (!u.integer(0))
            return {AuthStatus::KeyRevoked, {}};
        if (!u.isNull(3) && u.integer(3) < now)
            return {AuthStatus::KeyExpired, {}};
        if (!acct.admin && !u.integer(2))
            return {AuthStatus::MigrationRequired, {}};
        return {AuthStatus::Authorized, acct};
    }

    ReserveStatus reserve(const HoldRequest& h) override {
        ReserveStatus out = ReserveStatus::LedgerUnavailable;
        bool ok = commits_.run([&](Connection& c) {
            out = reserveIn(c, h);
            return out != ReserveStatus::LedgerUnavailable;
        });
        return ok ? out : ReserveStatus::LedgerUnavailable;
    }

    SettleOutcome settle(const Charge& ch) override {
        SettleOutcome out;
        if (!commits_.run([&](Connection& c) { return settleIn(c, ch, out); }))
            return SettleOutcome{};
        return out;
    }

    SliceGrant reserveSlice(const SliceRequest& r) override {
        SliceGrant out;
        bool ok = commits_.run([&](Connection& c) {
            out = sqlite::reserveSliceIn(c, r);
            return out.status != ReserveStatus::LedgerUnavailable;
        });
        return ok ? out : SliceGrant{};
    }

    // One operation of the group commit, so all of the charges or none take effect.
    std::vector<SettleOutcome> settleBatch(std::span<const Charge> charges) override {
        std::vector<SettleOutcome> out(charges.size());
        if (charges.empty())
            return out;
        if (!commits_.run([&](Connection& c) { return sqlite::settleAllIn(c, charges, out); }))
            out.assign(charges.size(), SettleOutcome{}); // LedgerUnavailable, none applied
        return out;
    }

    Result<void> release(std::string_view requestId) override {
        std::string id(requestId);
        if (!commits_.run([&](Connection& c) { return releaseIn(c, id); }))
            return Error{ErrorCode::Unavailable, "ledger database: the release was not written"};
        return {};
    }

    Result<void> renewHold(std::string_view requestId, std::int64_t expiresAtMs) override {
        std::string id(requestId);
        bool held = false;
        bool ok = commits_.run([&](Connection& c) {
            Stmt s = c.prepare("UPDATE holds SET expiresAtMs = ? WHERE requestId = ?");
            s.bind(1, expiresAtMs).bind(2, id);
            if (s.step() != SQLITE_DONE)
                return false;
            held = sqlite3_changes(c.handle()) > 0;
            return true;
        });
        if (!ok)
            return Error{ErrorCode::Unavailable, "ledger database: the renewal was not written"};
        if (!held)
            return Error{ErrorCode::NotFound, "request " + id + " holds nothing"};
        return {};
    }

    Result<std::int64_t> sweepExpiredHolds(std::int64_t now) override {
        return releaseSelected("SELECT requestId FROM holds WHERE expiresAtMs < ? LIMIT 1000",
                               [now](Stmt& s) { s.bind(1, now); });
    }

    Result<std::int64_t> releaseHolds(std::string_view requestIdPrefix) override {
        if (requestIdPrefix.empty())
            return Error{ErrorCode::InvalidArgument,
                         "an empty request id prefix would release every hold"};
        // Bytes, not LIKE: the prefix is literal (LIKE has wildcards and ignores ASCII case).
        return releaseSelected(
            "SELECT requestId FROM holds WHERE "
            "substr(CAST(requestId AS BLOB), 1, length(CAST(?1 AS BLOB))) = CAST(?1 AS BLOB)",
            [&](Stmt& s) { s.bind(1, std::string(requestIdPrefix)); });
    }

    Result<std::string> responseOwner(std::string_view responseId) override {
        auto c = pool_.take(nullptr);
        if (!c)
            return Error{ErrorCode::Unavailable, "ledger database cannot be opened"};
        Stmt s = (*c)->prepare("SELECT userId FROM request_logs WHERE responseId = ? LIMIT 1");
        s.bind(1, std::string(responseId));
        int rc = s.step();
        if (rc == SQLITE_DONE)
            return Error{ErrorCode::NotFound, "no request created this response"};
        if (rc != SQLITE_ROW)
            return unavailable(**c);
        return s.text(0);
    }

    Result<void> recordRequest(const LogEntry& e) override {
        auto c = pool_.take(nullptr);
        if (!c || !insertLog(**c, e, std::nullopt, true))
            return Error{ErrorCode::Unavailable, "cannot write the request log"};
        return {};
    }

    bool ping() override {
        auto c = pool_.take(nullptr);
        if (!c)
            return false;
        Stmt s = (*c)->prepare("SELECT count(*) FROM counters");
        return s.step() == SQLITE_ROW;
    }

    Result<void> addUser(std::string_view name) override;
    Result<std::string> addKey(std::string_view name) override;
    Result<void> revokeKey(std::string_view apiKey) override;
    Result<void> credit(std::string_view name, BalanceField field, Money amount) override;
    Result<Balance> balance(std::string_view name) override;
    Result<std::vector<LogEntry>> usage(std::string_view name, std::int64_t last) override;
    Result<Money> totalShortfall() override;

private:
    // Releases, in one transaction, the holds whose request ids `sql` selects
    // (`bind` fills its parameters), as release() does; returns how many.
    Result<std::int64_t> releaseSelected(const char* sql, const std::function<void(Stmt&)>& bind) {
        auto c = pool_.take(nullptr);
        if (!c)
            return Error{ErrorCode::Unavailable, "ledger database cannot be opened"};
        Transaction tx(**c);
        if (!tx.began())
            return unavailable(**c);
        std::vector<std::string> ids;
        {
            Stmt s = (*c)->prepare(sql);
            bind(s);
            int rc;
            while ((rc = s.step()) == SQLITE_ROW)
                ids.push_back(s.text(0));
            if (rc != SQLITE_DONE)
                return unavailable(**c);
        }
        for (const auto& id : ids) {
            if (!releaseIn(**c, id))
                return unavailable(**c);
        }
        if (!tx.commit())
            return unavailable(**c);
        return static_cast<std::int64_t>(ids.size());
    }

    // Responses API ids came after the first schema: databases made before get the
    // column (NULL for their rows) and its index.
    static Result<void> addResponseIdColumn(Connection& c) {
        bool has = false;
        {
            Stmt s = c.prepare(
                "SELECT 1 FROM pragma_table_info('request_logs') WHERE name = 'responseId'");
            int rc = s.step();
            if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                return Error{ErrorCode::Unavailable,
                             "cannot read the ledger schema: " + c.lastError()};
            has = rc == SQLITE_ROW;
        }
        if (!has && c.exec("ALTER TABLE request_logs ADD COLUMN responseId TEXT") != SQLITE_OK)
            return Error{ErrorCode::Unavailable,
                         "cannot add request_logs.responseId: " + c.lastError()};
        if (c.exec("CREATE INDEX IF NOT EXISTS request_logs_response ON request_logs (responseId) "
                   "WHERE responseId IS NOT NULL") != SQLITE_OK)
            return Error{ErrorCode::Unavailable,
                         "cannot index request_logs.responseId: " + c.lastError()};
        return {};
    }

    ConnectionPool pool_;
    GroupCommit commits_;
};

} // namespace

Result<std::unique_ptr<LedgerBackend>>
openSqliteLedger(const std::string& path, const LedgerOptions& options, bool fullSync) {
    // Before any connection: SQLite creates -wal and -shm with the database's mode.
    if (auto r = makeDatabasePrivate(path); !r)
        return r.error();
    auto l = std::make_unique<SqliteLedger>(path, options, fullSync);
    if (auto r = l->init(); !r)
        return r.error();
    return std::unique_ptr<LedgerBackend>(std::move(l));
}

} // namespace trollproxy::internal

// Administration, same transaction rules.
namespace trollproxy::internal {
namespace {

const char* creditSql(BalanceField field) {
    switch (field) {
    case BalanceField::Credits:
        return "UPDATE usersNew SET credits = credits + ? WHERE id = ?";
    case BalanceField::RefCredits:
        return "UPDATE usersNew SET refCredits = refCredits + ? WHERE id = ?";
    case BalanceField::CreditsNew:
        break;
    }
    return "UPDATE usersNew SET creditsNew = creditsNew + ? WHERE id = ?";
}

} // namespace

Result<void> SqliteLedger::addUser(std::string_view name) {
    if (name.empty())
        return Error{ErrorCode::InvalidArgument, "a user name must not be empty"};
    auto c = pool_.take(nullptr);
    if (!c)
        return Error{ErrorCode::Unavailable, "ledger database cannot be opened"};
    Stmt s = (*c)->prepare("INSERT INTO usersNew (id, createdAt) VALUES (?, ?)");
    s.bind(1, std::string(name)).bind(2, nowMs());
    int rc = s.step();
    if (rc == SQLITE_CONSTRAINT)
        return Error{ErrorCode::Conflict, "user " + std::string(name) + " already exists"};
    if (rc != SQLITE_DONE)
        return unavailable(**c);
    return {};
}

Result<std::string> SqliteLedger::addKey(std::string_view name) {
    auto c = pool_.take(nullptr);
    if (!c)
        return Error{ErrorCode::Unavailable, "ledger database cannot be opened"};
    Transaction tx(**c);
    if (!tx.began())
        return unavailable(**c);
    bool hasPrimary = false;
    {
        Stmt s = (*c)->prepare("SELECT apiKey IS NOT NULL FROM usersNew WHERE id = ?");
        s.bind(1, std::string(name));
        if (s.step() != SQLITE_ROW)
            return Error{ErrorCode::NotFound, "no user " + std::string(name)};
        hasPrimary = s.integer(0) != 0;
    }
    std::string key = newApiKey();
    // The first key is the user's own `apiKey`, as production has it; more keys
    // go to user_keys.
    Stmt s = (*c)->prepare(
        hasPrimary ? "INSERT INTO user_keys (id, name, createdAt) VALUES (?, ?, ?)"
                   : "UPDATE usersNew SET apiKey = ?1 WHERE id = ?2 AND ?3 IS NOT NULL");
    s.bind(1, keyDigest(key)).bind(2, std::string(name)).bind(3, nowMs());
    if (s.step() != SQLITE_DONE || !tx.commit())
        return unavailable(**c);
    return key; // the only time the plain key exists: the file keeps its digest
}

Result<void> SqliteLedger::revokeKey(std::string_view apiKey) {
    auto c = pool_.take(nullptr);
    if (!c)
        return Error{ErrorCode::Unavailable, "ledger database cannot be opened"};
    Transaction tx(**c);
    if (!tx.began())
        return unavailable(**c);
    std::string key = keyDigest(apiKey);
    std::string owner;
    {
        Stmt s = (*c)->prepare("SELECT id FROM usersNew WHERE apiKey = ?");
        s.bind(1, key);
        if (s.step() == SQLITE_ROW)
            owner = s.text(0);
    }
    if (!owner.empty()) {
        // Keep the revoked key on record so it answers "revoked", not "unknown".
        Stmt clear = (*c)->prepare("UPDATE usersNew SET apiKey = NULL WHERE id = ?");
        clear.bind(1, owner);
        Stmt keep = (*c)->prepare(
            "INSERT OR REPLACE INTO user_keys (id, name, isActive, createdAt) VALUES (?, ?, 0, ?)");
        keep.bind(1, key).bind(2, owner).bind(3, nowMs());
        if (clear.step() != SQLITE_DONE || keep.step() != SQLITE_DONE)
            return unavailable(**c);
    } else {
        Stmt s = (*c)->prepare("UPDATE user_keys SET isActive = 0 WHERE id = ?");
        s.bind(1, key);
        if (s.step() != SQLITE_DONE)
            return unavailable(**c);
        if (sqlite3_changes((*c)->handle()) == 0)
            return Error{ErrorCode::NotFound, "no such key"};
    }
    if (!tx.commit())
        return unavailable(**c);
    return {};
}

Result<void> SqliteLedger::credit(std::string_view name, BalanceField field, Money amount) {
    if (amount.nanos < 0)
        return Error{ErrorCode::InvalidArgument, "the amount must not be negative"};
    auto c = pool_.take(nullptr);
    if (!c)
        return Error{ErrorCode::Unavailable, "ledger database cannot be opened"};
    Stmt s = (*c)->prepare(creditSql(field));
    s.bind(1, amount.nanos).bind(2, std::string(name));
    if (s.step() != SQLITE_DONE)
        return unavailable(**c);
    if (sqlite3_changes((*c)->handle()) == 0)
        return Error{ErrorCode::NotFound, "no user " + std::string(name)};
    return {};
}

Result<Balance> SqliteLedger::balance(std::string_view name) {
    auto c = pool_.take(nullptr);
    if (!c)
        return Error{ErrorCode::Unavailable, "ledger database cannot be opened"};
    // One statement, one snapshot: a hold moves money between the two tables.
    Stmt s = (*c)->prepare("SELECT credits, creditsUsed, refCredits, creditsNew, creditsNewUsed, "
                           "tokensUserNew, totalInputTokens, "
                           "totalOutputTokens, h.c, h.r, h.n FROM usersNew, (SELECT "
                           "coalesce(sum(fromCredits), 0) AS c, "
                           "coalesce(sum(fromRefCredits), 0) AS r, coalesce(sum(fromCreditsNew), "
                           "0) AS n FROM holds WHERE userId = ?1) "
                           "AS h WHERE id = ?1");
    s.bind(1, std::string(name));
    int rc = s.step();
    if (rc == SQLITE_DONE)
        return Error{ErrorCode::NotFound, "no user " + std::string(name)};
    if (rc != SQLITE_ROW)
        return unavailable(**c);
    return Balance{Money{s.integer(0)}, Money{s.integer(1)}, Money{s.integer(2)},
                   Money{s.integer(3)}, Money{s.integer(4)}, s.integer(5),
                   s.integer(6),        s.integer(7),        Money{s.integer(8)},
                   Money{s.integer(9)}, Money{s.integer(10)}};
}

Result<std::vector<LogEntry>> SqliteLedger::usage(std::string_view name, std::int64_t last) {
    auto c = pool_.take(nullptr);
    if (!c)
        return Error{ErrorCode::Unavailable, "ledger database cannot be opened"};
    Stmt s = (*c)->prepare(
        "SELECT requestId, userId, userKeyId, model, inputTokens, outputTokens, cacheWriteTokens, "
        "cacheHitTokens, creditsCost, shortfall, creditType, statusCode, latencyMs, isSuccess, "
        "estimated, createdAt FROM request_logs WHERE userId = ? "
        "ORDER BY createdAt DESC, rowid DESC LIMIT ?");
    s.bind(1, std::string(name)).bind(2, last);
    std::vector<LogEntry> out;
    int rc;
    while ((rc = s.step()) == SQLITE_ROW) {
        LogEntry e;
        e.requestId = s.text(0);
        e.userId = s.text(1);
        e.keyId = s.text(2);
        e.model = s.text(3);
        e.usage = Usage{s.integer(4), s.integer(6), s.integer(7), s.integer(5), s.integer(14) != 0};
        e.cost = Money{s.integer(8)};
        e.shortfall = Money{s.integer(9)};
        e.creditType = s.text(10);
        e.statusCode = static_cast<int>(s.integer(11));
        e.latencyMs = s.integer(12);
        e.success = s.integer(13) != 0;
        e.createdAtMs = s.integer(15);
        out.push_back(std::move(e));
    }
    if (rc != SQLITE_DONE)
        return unavailable(**c);
    return out;
}

Result<Money> SqliteLedger::totalShortfall() {
    auto c = pool_.take(nullptr);
    if (!c)
        return Error{ErrorCode::Unavailable, "ledger database cannot be opened"};
    Stmt s = (*c)->prepare("SELECT value FROM counters WHERE name = 'shortfall'");
    int rc = s.step();
    if (rc == SQLITE_ROW)
        return Money{s.integer(0)};
    if (rc != SQLITE_DONE)
        return unavailable(**c);
    return Money{0};
}

} // namespace trollproxy::internal
