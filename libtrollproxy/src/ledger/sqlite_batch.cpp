// A batch of charges in one transaction: the charges that draw on slices share one read and one
// write of each user, slice and key row; each still gets its own log entry, in order.
#include <map>
#include <string>

#include <sqlite3.h>

#include "ledger/sqlite_db.hpp"
#include "ledger/sqlite_steps.hpp"

namespace trollproxy::internal::sqlite {

namespace {

/// The rows the slice charges of a batch change, kept in memory between a
/// first read and one write at flush(). Exactly what settling the charges one
/// by one would store: each row is read inside the same write transaction, and
/// anything else that writes these rows (a request's own hold, a repeated id)
/// runs only after flush().
class BatchRows {
public:
    explicit BatchRows(Connection& c) : c_(c) {}

    /// As drawOnSliceIn, on the rows kept here; false when a statement failed.
    bool drawOnSlice(const Charge& ch, Settlement& st);
    void countUse(const Charge& ch, const Settlement& st);
    /// Writes what changed and forgets every row; false when a statement failed.
    bool flush();

private:
    struct User {
        Found found = Found::No;
        PoolFields balance;
        PoolUse added;
        bool changed = false;
    };
    struct Slice {
        int rc = SQLITE_DONE; // SQLITE_ROW: the slice exists for this user and pool
        PoolFields held;
        bool changed = false;
    };

    User* user(const std::string& id);
    Slice* slice(const Charge& ch);

    Connection& c_;
    std::map<std::string, User> users_;
    std::map<std::string, Slice> slices_; // by id, user and pool: readSlice's question
    std::map<std::string, KeyUse> keys_;
    std::int64_t shortfall_ = 0;
};

BatchRows::User* BatchRows::user(const std::string& id) {
    auto it = users_.find(id);
    if (it != users_.end())
        return &it->second;
    User u;
    u.found = readFields(c_, id, u.balance);
    if (u.found == Found::Failed)
        return nullptr;
    return &users_.emplace(id, u).first->second;
}

BatchRows::Slice* BatchRows::slice(const Charge& ch) {
    std::string key = ch.holdId;
    key.append(1, '\0').append(ch.userId).append(1, '\0').append(poolName(ch.pool));
    auto it = slices_.find(key);
    if (it != slices_.end())
        return &it->second;
    Slice s;
    s.rc = readSlice(c_, ch, s.held);
    if (s.rc != SQLITE_ROW && s.rc != SQLITE_DONE)
        return nullptr;
    return &slices_.emplace(std::move(key), s).first->second;
}

bool BatchRows::drawOnSlice(const Charge& ch, Settlement& st) {
    Slice* s = slice(ch);
    User* u = s ? user(ch.userId) : nullptr;
    if (!u)
        return false;
    // A user without a row is charged nothing (as drawOnSliceIn: zero fields).
    const PoolFields balance = u->found == Found::Yes ? u->balance : PoolFields{};
    SliceSettlement r =
        settleAgainstSlice(ch.pool, ch.cost.nanos, ch.holdShare.nanos, s->held, balance);
    st = r.settlement;
    if (u->found == Found::Yes) {
        const PoolUse add = poolUse(ch, st);
        u->balance = st.after;
        u->added.creditsUsed += add.creditsUsed;
        u->added.creditsNewUsed += add.creditsNewUsed;
        u->added.tokensUserNew += add.tokensUserNew;
        u->added.inputTokens += add.inputTokens;
        u->added.outputTokens += add.outputTokens;
        u->changed = true;
    }
    if (s->rc == SQLITE_ROW) {
        s->held = r.heldAfter;
        s->changed = true;
    }
    return true;
}

void BatchRows::countUse(const Charge& ch, const Settlement& st) {
    keys_[ch.keyId].add(ch);
    shortfall_ += st.shortfall;
}

bool BatchRows::flush() {
    bool ok = true;
    for (const auto& [id, u] : users_)
        ok = ok && (!u.changed || storeUserIn(c_, id, u.balance, u.added));
    for (const auto& [key, s] : slices_) {
        if (!ok || !s.changed)
            continue;
        Stmt up = c_.prepare("UPDATE holds SET fromCredits = ?, fromRefCredits = ?, "
                             "fromCreditsNew = ? WHERE requestId = ?");
        up.bind(1, s.held.credits).bind(2, s.held.refCredits).bind(3, s.held.creditsNew);
        up.bind(4, key.substr(0, key.find('\0')));
        ok = up.step() == SQLITE_DONE;
    }
    for (const auto& [id, k] : keys_)
        ok = ok && addKeyUseIn(c_, id, k);
    ok = ok && (shortfall_ == 0 || addCounterIn(c_, "shortfall", shortfall_));
    users_.clear();
    slices_.clear();
    keys_.clear();
    shortfall_ = 0;
    return ok;
}

// A charge on a slice whose id is not logged yet: the rows in memory, the log entry now.
bool settleOnSlice(Connection& c, BatchRows& rows, const Charge& ch, SettleOutcome& out) {
    Settlement st;
    if (!rows.drawOnSlice(ch, st) || !insertLog(c, settlementLog(ch, st), ch.pool, false))
        return false;
    rows.countUse(ch, st);
    out.status = SettleStatus::Settled;
    out.charged = Money{st.charged};
    out.shortfall = Money{st.shortfall};
    return true;
}

} // namespace

bool settleAllIn(Connection& c, std::span<const Charge> charges,
                 std::vector<SettleOutcome>& outcomes) {
    outcomes.assign(charges.size(), SettleOutcome{});
    BatchRows rows(c);
    for (std::size_t i = 0; i < charges.size(); ++i) {
        const Charge& ch = charges[i];
        // A request id met twice here is AlreadySettled the second time: the
        // first one's log entry is already written in this transaction.
        const int seen = ch.holdId.empty() ? SQLITE_ROW : loggedIn(c, ch.requestId);
        if (seen == SQLITE_DONE) {
            if (!settleOnSlice(c, rows, ch, outcomes[i]))
                return false;
            continue;
        }
        if (seen != SQLITE_ROW)
            return false;
        // A request's own hold, or an id settled before: settleIn writes the
        // rows itself, so the ones kept here are written first.
        if (!rows.flush() || !settleIn(c, ch, outcomes[i]))
            return false;
    }
    return rows.flush();
}

} // namespace trollproxy::internal::sqlite
