// The SQLite ledger's money steps, each run inside an open write transaction (a
// GroupCommit batch or a Transaction): sqlite_steps.cpp holds, settlement and the
// request log; sqlite_slices.cpp budget slices and batches of charges.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

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

/// Writes a request log entry; `pool` is NULL for entries without a charge.
bool insertLog(Connection& c, const LogEntry& e, std::optional<Pool> pool, bool ignoreDuplicate);

// sqlite_slices.cpp

/// Adds to a budget slice from the pool's free balance (see SliceRequest);
/// InsufficientCredits too when the id is another user's or pool's hold;
/// LedgerUnavailable when a statement failed.
SliceGrant reserveSliceIn(Connection& c, const SliceRequest& r);

/// The balance part of settling a charge that draws on the slice Charge::holdId:
/// the user's fields and counters, the slice's rest; false when a statement failed.
bool drawOnSliceIn(Connection& c, const Charge& ch, Settlement& st);

/// Settles every charge in order (as settleIn), outcomes[i] for charges[i]; false
/// when a statement failed (the caller rolls them all back).
bool settleAllIn(Connection& c, std::span<const Charge> charges,
                 std::vector<SettleOutcome>& outcomes);

} // namespace sqlite
} // namespace trollproxy::internal
