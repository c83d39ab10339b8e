// Holds, settlement and the request log, inside the caller's write transaction.
#include "ledger/sqlite_steps.hpp"

#include <sqlite3.h>

#include "ledger/sqlite_db.hpp"
#include "ledger/sqlite_secrets.hpp"

namespace trollproxy::internal::sqlite {

namespace {

// What the request's hold took from each field; zero when it holds nothing.
PoolFields heldFor(Connection& c, const std::string& id) {
    PoolFields held;
    Stmt s = c.prepare(
        "SELECT fromCredits, fromRefCredits, fromCreditsNew FROM holds WHERE requestId = ?");
    s.bind(1, id);
    if (s.step() == SQLITE_ROW)
        held = {s.integer(0), s.integer(1), s.integer(2)};
    return held;
}

// The settlement's request log entry, and its shortfall added to the running total.
bool logSettlementIn(Connection& c, const Charge& ch, const Settlement& st) {
    if (!insertLog(c, settlementLog(ch, st), ch.pool, false))
        return false;
    return st.shortfall == 0 || addCounterIn(c, "shortfall", st.shortfall);
}

// The charge replaces the request's own hold (if any): the rest goes back.
bool replaceHoldIn(Connection& c, const Charge& ch, Settlement& st) {
    PoolFields held = heldFor(c, ch.requestId);
    PoolFields bal;
    Found user = readFields(c, ch.userId, bal);
    if (user == Found::Failed)
        return false;
    if (user == Found::No)
        bal = held; // only the hold can be accounted for
    st = settleAgainst(ch.pool, ch.cost.nanos, held, bal);
    if (user == Found::Yes && !chargeUserIn(c, ch, st))
        return false;
    Stmt del = c.prepare("DELETE FROM holds WHERE requestId = ?");
    del.bind(1, ch.requestId);
    return del.step() == SQLITE_DONE;
}

} // namespace

// One hold, inside a group-commit transaction. LedgerUnavailable when a statement failed.
ReserveStatus reserveIn(Connection& c, const HoldRequest& h) {
    {
        Stmt s = c.prepare("SELECT 1 FROM holds WHERE requestId = ?");
        s.bind(1, h.requestId);
        if (s.step() == SQLITE_ROW)
            return ReserveStatus::Reserved; // the same hold again
    }
    PoolFields bal;
    if (Found user = readFields(c, h.userId, bal); user != Found::Yes)
        return user == Found::No ? ReserveStatus::InsufficientCredits
                                 : ReserveStatus::LedgerUnavailable;
    PoolFields take;
    if (!takeHold(h.pool, h.amount.nanos, bal, take))
        return ReserveStatus::InsufficientCredits;
    Stmt up = c.prepare("UPDATE usersNew SET credits = credits - ?, refCredits = refCredits - ?, "
                        "creditsNew = creditsNew - ? WHERE id = ?");
    up.bind(1, take.credits).bind(2, take.refCredits).bind(3, take.creditsNew).bind(4, h.userId);
    if (up.step() != SQLITE_DONE)
        return ReserveStatus::LedgerUnavailable;
    Stmt ins = c.prepare("INSERT INTO holds (requestId, userId, pool, fromCredits, fromRefCredits, "
                         "fromCreditsNew, expiresAtMs) VALUES (?, ?, ?, ?, ?, ?, ?)");
    ins.bind(1, h.requestId).bind(2, h.userId).bind(3, std::string(poolName(h.pool)));
    ins.bind(4, take.credits)
        .bind(5, take.refCredits)
        .bind(6, take.creditsNew)
        .bind(7, h.expiresAtMs);
    if (ins.step() != SQLITE_DONE)
        return ReserveStatus::LedgerUnavailable;
    return ReserveStatus::Reserved;
}

bool addCounterIn(Connection& c, const char* name, std::int64_t v) {
    Stmt s = c.prepare("INSERT INTO counters (name, value) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value");
    s.bind(1, std::string(name)).bind(2, v);
    return s.step() == SQLITE_DONE;
}

LogEntry settlementLog(const Charge& ch, const Settlement& st) {
    return LogEntry{ch.requestId,
                    ch.userId,
                    ch.keyId,
                    ch.model,
                    ch.usage,
                    Money{st.charged},
                    Money{st.shortfall},
                    poolCreditType(ch.pool),
                    ch.statusCode,
                    ch.latencyMs,
                    ch.success,
                    ch.createdAtMs,
                    ch.responseId};
}

bool addKeyUseIn(Connection& c, const std::string& keyId, const KeyUse& use) {
    Stmt k = c.prepare(
        "UPDATE user_keys SET tokensUsed = tokensUsed + ?, requestsCount = requestsCount + ?, "
        "lastUsedAt = ? WHERE id = ?");
    k.bind(1, use.tokens).bind(2, use.requests).bind(3, use.lastUsedAt);
    k.bind(4, storedKeyId(keyId));
    return k.step() == SQLITE_DONE;
}

int loggedIn(Connection& c, const std::string& requestId) {
    Stmt s = c.prepare("SELECT 1 FROM request_logs WHERE requestId = ?");
    s.bind(1, requestId);
    return s.step();
}

// One settlement, inside a group-commit transaction; false when a statement failed.
bool settleIn(Connection& c, const Charge& ch, SettleOutcome& out) {
    const int seen = loggedIn(c, ch.requestId);
    if (seen == SQLITE_ROW) {
        // A hold taken again under a settled id (a client retry) must not keep
        // the money: return it, change nothing else (a slice stays as it is).
        if (!releaseIn(c, ch.requestId))
            return false;
        out.status = SettleStatus::AlreadySettled;
        return true;
    }
    if (seen != SQLITE_DONE)
        return false;
    Settlement st;
    if (!(ch.holdId.empty() ? replaceHoldIn(c, ch, st) : drawOnSliceIn(c, ch, st)))
        return false;
    KeyUse use;
    use.add(ch);
    if (!logSettlementIn(c, ch, st) || !addKeyUseIn(c, ch.keyId, use))
        return false;
    out.status = SettleStatus::Settled;
    out.charged = Money{st.charged};
    out.shortfall = Money{st.shortfall};
    return true;
}

PoolUse poolUse(const Charge& ch, const Settlement& st) {
    const bool isNew = ch.pool == Pool::CreditsNew;
    const std::int64_t tokensIn = ch.usage.totalInput();
    return {isNew ? 0 : st.charged, isNew ? st.charged : 0, isNew ? tokensIn + ch.usage.output : 0,
            tokensIn, ch.usage.output};
}

// The user's balances after the settlement, and the pool's used and token counters.
bool chargeUserIn(Connection& c, const Charge& ch, const Settlement& st) {
    return storeUserIn(c, ch.userId, st.after, poolUse(ch, st));
}

bool storeUserIn(Connection& c, const std::string& userId, const PoolFields& after,
                 const PoolUse& add) {
    Stmt up = c.prepare("UPDATE usersNew SET credits = ?, refCredits = ?, creditsNew = ?, "
                        "creditsUsed = creditsUsed + ?, "
                        "creditsNewUsed = creditsNewUsed + ?, tokensUserNew = tokensUserNew + ?, "
                        "totalInputTokens = totalInputTokens + ?, totalOutputTokens = "
                        "totalOutputTokens + ? WHERE id = ?");
    up.bind(1, after.credits).bind(2, after.refCredits).bind(3, after.creditsNew);
    up.bind(4, add.creditsUsed).bind(5, add.creditsNewUsed).bind(6, add.tokensUserNew);
    up.bind(7, add.inputTokens).bind(8, add.outputTokens).bind(9, userId);
    return up.step() == SQLITE_DONE;
}

Found readFields(Connection& c, const std::string& user, PoolFields& f) {
    Stmt s = c.prepare("SELECT credits, refCredits, creditsNew FROM usersNew WHERE id = ?");
    s.bind(1, user);
    int rc = s.step();
    if (rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? Found::No : Found::Failed;
    f = {s.integer(0), s.integer(1), s.integer(2)};
    return Found::Yes;
}

bool releaseIn(Connection& c, const std::string& id) {
    std::string user;
    PoolFields held;
    {
        Stmt s = c.prepare("SELECT userId, fromCredits, fromRefCredits, fromCreditsNew FROM "
                           "holds WHERE requestId = ?");
        s.bind(1, id);
        int rc = s.step();
        if (rc == SQLITE_DONE)
            return true; // nothing held (settled or released before)
        if (rc != SQLITE_ROW)
            return false;
        user = s.text(0);
        held = {s.integer(1), s.integer(2), s.integer(3)};
    }
    Stmt up = c.prepare("UPDATE usersNew SET credits = credits + ?, refCredits = refCredits + ?, "
                        "creditsNew = creditsNew + ? WHERE id = ?");
    up.bind(1, held.credits).bind(2, held.refCredits).bind(3, held.creditsNew).bind(4, user);
    if (up.step() != SQLITE_DONE)
        return false;
    Stmt del = c.prepare("DELETE FROM holds WHERE requestId = ?");
    del.bind(1, id);
    return del.step() == SQLITE_DONE;
}

bool insertLog(Connection& c, const LogEntry& e, std::optional<Pool> pool, bool ignoreDuplicate) {
    Stmt s =
        c.prepare(ignoreDuplicate
                      ? "INSERT OR IGNORE INTO request_logs VALUES "
                        "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                      : "INSERT INTO request_logs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    s.bind(1, e.requestId).bind(2, e.userId).bind(3, storedKeyId(e.keyId)).bind(4, e.model);
    s.bind(5, e.usage.uncachedInput).bind(6, e.usage.output).bind(7, e.usage.cacheWrite);
    s.bind(8, e.usage.cacheRead).bind(9, e.cost.nanos).bind(10, e.shortfall.nanos);
    s.bind(11, e.usage.totalInput() + e.usage.output).bind(12, e.statusCode).bind(13, e.latencyMs);
    s.bind(14, e.success ? 1 : 0).bind(15, e.creditType);
    if (pool)
        s.bind(16, std::string(poolName(*pool)));
    else
        s.bindNull(16);
    s.bind(17, e.usage.estimated ? 1 : 0).bind(18, e.createdAtMs);
    if (e.responseId.empty())
        s.bindNull(19);
    else
        s.bind(19, e.responseId);
    return s.step() == SQLITE_DONE;
}

} // namespace trollproxy::internal::sqlite
