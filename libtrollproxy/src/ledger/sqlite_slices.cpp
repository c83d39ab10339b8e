// Budget slices on SQLite: a slice is a row of `holds` that grows by reserveSlice and
// shrinks by each charge drawn on it.
#include <sqlite3.h>

#include "ledger/sqlite_db.hpp"
#include "ledger/sqlite_steps.hpp"

namespace trollproxy::internal::sqlite {

// The slice's fields, when it exists and belongs to this user and pool (a
// slice of another pool must not pay for this one).
int readSlice(Connection& c, const Charge& ch, PoolFields& held) {
    Stmt s = c.prepare("SELECT fromCredits, fromRefCredits, fromCreditsNew FROM holds "
                       "WHERE requestId = ? AND userId = ? AND pool = ?");
    s.bind(1, ch.holdId).bind(2, ch.userId).bind(3, std::string(poolName(ch.pool)));
    int rc = s.step();
    if (rc == SQLITE_ROW)
        held = {s.integer(0), s.integer(1), s.integer(2)};
    return rc;
}

namespace {

// Adds `take` to the slice, creating it, and sets its expiry. False when the id
// is another user's or pool's hold, or the statement failed (`failed`).
bool addToSlice(Connection& c, const SliceRequest& r, const PoolFields& take, bool& failed) {
    Stmt s = c.prepare(
        "INSERT INTO holds (requestId, userId, pool, fromCredits, fromRefCredits, "
        "fromCreditsNew, expiresAtMs) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (requestId) DO UPDATE SET fromCredits = fromCredits + excluded.fromCredits, "
        "fromRefCredits = fromRefCredits + excluded.fromRefCredits, "
        "fromCreditsNew = fromCreditsNew + excluded.fromCreditsNew, "
        "expiresAtMs = excluded.expiresAtMs "
        "WHERE userId = excluded.userId AND pool = excluded.pool");
    s.bind(1, r.sliceId).bind(2, r.userId).bind(3, std::string(poolName(r.pool)));
    s.bind(4, take.credits).bind(5, take.refCredits).bind(6, take.creditsNew);
    s.bind(7, r.expiresAtMs);
    failed = s.step() != SQLITE_DONE;
    return !failed && sqlite3_changes(c.handle()) == 1;
}

} // namespace

SliceGrant reserveSliceIn(Connection& c, const SliceRequest& r) {
    const SliceGrant refused{ReserveStatus::InsufficientCredits, {}};
    PoolFields bal;
    Found user = readFields(c, r.userId, bal);
    if (user != Found::Yes)
        return user == Found::No ? refused : SliceGrant{};
    std::int64_t add = sliceAmount(r.pool, bal, r.want.nanos, r.atLeast.nanos, r.freePermille);
    PoolFields take;
    if (add == 0 || !takeHold(r.pool, add, bal, take))
        return refused;
    bool failed = false;
    if (!addToSlice(c, r, take, failed))
        return failed ? SliceGrant{} : refused;
    Stmt up = c.prepare("UPDATE usersNew SET credits = credits - ?, refCredits = refCredits - ?, "
                        "creditsNew = creditsNew - ? WHERE id = ?");
    up.bind(1, take.credits).bind(2, take.refCredits).bind(3, take.creditsNew).bind(4, r.userId);
    if (up.step() != SQLITE_DONE)
        return {};
    return {ReserveStatus::Reserved, Money{add}};
}

bool drawOnSliceIn(Connection& c, const Charge& ch, Settlement& st) {
    PoolFields held; // zero when the slice is gone (released or swept)
    int slice = readSlice(c, ch, held);
    if (slice != SQLITE_ROW && slice != SQLITE_DONE)
        return false;
    PoolFields bal;
    Found user = readFields(c, ch.userId, bal);
    if (user == Found::Failed)
        return false;
    SliceSettlement s = settleAgainstSlice(ch.pool, ch.cost.nanos, ch.holdShare.nanos, held, bal);
    st = s.settlement;
    if (user == Found::Yes && !chargeUserIn(c, ch, st))
        return false;
    if (slice != SQLITE_ROW)
        return true; // nothing to keep: a settlement does not bring a slice back
    // The slice keeps its rest (even zero) and its expiry until released or swept.
    Stmt up = c.prepare("UPDATE holds SET fromCredits = ?, fromRefCredits = ?, "
                        "fromCreditsNew = ? WHERE requestId = ?");
    up.bind(1, s.heldAfter.credits).bind(2, s.heldAfter.refCredits);
    up.bind(3, s.heldAfter.creditsNew).bind(4, ch.holdId);
    return up.step() == SQLITE_DONE;
}

} // namespace trollproxy::internal::sqlite
