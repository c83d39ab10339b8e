// The SQLite ledger's money steps, each run inside an open write transaction (a
// GroupCommit batch or a Transaction): sqlite_steps.cpp holds, settlement and the
// request log; sqlite_slices.cpp budget slices; sqlite_batch.cpp batches of charges.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ledger/key_use.hpp"
#include "ledger/pool_math.hpp"
#include "trollproxy/ledger.hpp"

namespace trollproxy::internal {

class Connection;

namespace sqlite {

/// Takes one request's hold. LedgerUnavailable when a statement failed.
ReserveStatus reserveIn(Connection& c, const HoldRequest& h);

/// Settles one charge exactly once per request id (its own hold, or a slice
/// when Charge::holdId is set); false when a statement failed.
bool settleIn(Connection& c, const Charge& ch, SettleOutcome& out);

/// Returns a hold (a request's or a slice's) to the fields it came from; true
/// when there is none.
bool releaseIn(Connection& c, const std::string& id);

/// Whether a row was there; Failed when the statement failed.
enum class Found { Yes, No, Failed };

/// Reads the user's balance fields into `f` (when Yes).
Found readFields(Connection& c, const std::string& user, PoolFields& f);

/// Stores the balances after a settlement and adds to the pool's used and token counters.
bool chargeUserIn(Connection& c, const Charge& ch, const Settlement& st);

/// What settlements add to a user's used and token counters.
struct PoolUse {
    std::int64_t creditsUsed = 0;
    std::int64_t creditsNewUsed = 0;
    std::int64_t tokensUserNew = 0;
    std::int64_t inputTokens = 0;
    std::int64_t outputTokens = 0;
};
/// What the settlement `st` of `ch` adds.
PoolUse poolUse(const Charge& ch, const Settlement& st);
/// Stores the user's balance fields and adds `add` to the counters.
bool storeUserIn(Connection& c, const std::string& userId, const PoolFields& after,
                 const PoolUse& add);

/// Adds `use` to the key's statistics.
bool addKeyUseIn(Connection& c, const std::string& keyId, const KeyUse& use);

/// SQLITE_ROW when the request id has a log entry, SQLITE_DONE when not, else failed.
int loggedIn(Connection& c, const std::string& requestId);
/// A settlement's request log entry.
LogEntry settlementLog(const Charge& ch, const Settlement& st);
/// Adds `v` to the named counter (e.g. "shortfall").
bool addCounterIn(Connection& c, const char* name, std::int64_t v);

/// Writes a request log entry; `pool` is NULL for entries without a charge.
bool insertLog(Connection& c, const LogEntry& e, std::optional<Pool> pool, bool ignoreDuplicate);

// sqlite_slices.cpp

/// Adds to a budget slice from the pool's free balance (see SliceRequest);
/// InsufficientCredits too when the id is another user's or pool's hold;
/// LedgerUnavailable when a statement failed.
SliceGrant reserveSliceIn(Connection& c, const SliceRequest& r);

/// The fields of the slice Charge::holdId into `held` (SQLITE_ROW) when it is
/// this user's and pool's; SQLITE_DONE when not; else the statement failed.
int readSlice(Connection& c, const Charge& ch, PoolFields& held);

/// The balance part of settling a charge that draws on the slice Charge::holdId:
/// the user's fields and counters, the slice's rest; false when a statement failed.
bool drawOnSliceIn(Connection& c, const Charge& ch, Settlement& st);

// sqlite_batch.cpp

/// Settles every charge in order (as settleIn), outcomes[i] for charges[i]; false
/// when a statement failed (the caller rolls them all back).
bool settleAllIn(Connection& c, std::span<const Charge> charges,
                 std::vector<SettleOutcome>& outcomes);

} // namespace sqlite
} // namespace trollproxy::internal
