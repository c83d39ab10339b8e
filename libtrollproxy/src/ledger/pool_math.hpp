// The pool arithmetic shared by every ledger backend: holds, settlement, shortfall.
#pragma once

#include <cstdint>

#include "trollproxy/pool.hpp"

namespace trollproxy::internal {

/// Amounts (nano-USD) in the three balance fields.
struct PoolFields {
    std::int64_t credits = 0;
    std::int64_t refCredits = 0;
    std::int64_t creditsNew = 0;
};

/// Splits a hold over the pool's fields (Credits: `credits` first, then
/// `refCredits`). False when the balance cannot cover it.
bool takeHold(Pool pool, std::int64_t amount, const PoolFields& balance, PoolFields& take);

/// The outcome of settling a cost against a hold and the current balance.
struct Settlement {
    PoolFields after;           ///< the balance fields to store
    std::int64_t charged = 0;   ///< taken in total (hold part + extra)
    std::int64_t shortfall = 0; ///< cost that could not be taken
};

/// The hold pays first (its `credits` part before its `refCredits` part); the
/// unused rest goes back to the fields it came from; a cost above the hold is
/// taken from the balance as far as it goes. No field ends below zero.
Settlement settleAgainst(Pool pool, std::int64_t cost, const PoolFields& held,
                         const PoolFields& balance);

/// What a budget slice adds: min(want, free × permille / 1000), where free is
/// the pool's free balance (negative fields count as zero); 0 when that is
/// below atLeast (the slice is refused). Exact in integers, without overflow.
std::int64_t sliceAmount(Pool pool, const PoolFields& balance, std::int64_t want,
                         std::int64_t atLeast, std::int64_t permille);

/// Settling a charge that draws on a budget slice.
struct SliceSettlement {
    Settlement settlement; ///< the balance after (the slice's rest stays held)
    PoolFields heldAfter;  ///< the slice's fields after
};

/// At most `share` of the cost is paid by the slice `held` (its `credits`
/// part before its `refCredits` part), which keeps the rest; the cost beyond
/// is taken from the balance as far as it goes. No field ends below zero.
SliceSettlement settleAgainstSlice(Pool pool, std::int64_t cost, std::int64_t share,
                                   const PoolFields& held, const PoolFields& balance);

} // namespace trollproxy::internal
