// Pool arithmetic in integers; both backends call these so they agree to the nano-dollar.
#include "ledger/pool_math.hpp"

#include <algorithm>

namespace trollproxy::internal {

bool takeHold(Pool pool, std::int64_t amount, const PoolFields& b, PoolFields& take) {
    take = {};
    if (amount < 0)
        return false;
    if (pool == Pool::CreditsNew) {
        if (b.creditsNew < amount)
            return false;
        take.creditsNew = amount;
        return true;
    }
    if (b.credits + b.refCredits < amount)
        return false;
    take.credits = std::min(std::max<std::int64_t>(b.credits, 0), amount);
    take.refCredits = amount - take.credits;
    return true;
}

Settlement settleAgainst(Pool pool, std::int64_t cost, const PoolFields& held,
                         const PoolFields& b) {
    Settlement s;
    s.after = b;
    cost = std::max<std::int64_t>(cost, 0);
    if (pool == Pool::CreditsNew) {
        std::int64_t fromHold = std::min(cost, held.creditsNew);
        std::int64_t available = b.creditsNew + (held.creditsNew - fromHold);
        std::int64_t extra = std::min(cost - fromHold, std::max<std::int64_t>(available, 0));
        s.after.creditsNew = available - extra;
        s.charged = fromHold + extra;
    } else {
        std::int64_t fromC = std::min(cost, held.credits);
        std::int64_t fromR = std::min(cost - fromC, held.refCredits);
        std::int64_t credits = b.credits + (held.credits - fromC);
        std::int64_t ref = b.refCredits + (held.refCredits - fromR);
        std::int64_t rest = cost - fromC - fromR;
        std::int64_t extraC = std::min(rest, std::max<std::int64_t>(credits, 0));
        std::int64_t extraR = std::min(rest - extraC, std::max<std::int64_t>(ref, 0));
        s.after.credits = credits - extraC;
        s.after.refCredits = ref - extraR;
        s.charged = fromC + fromR + extraC + extraR;
    }
    s.shortfall = cost - s.charged;
    return s;
}

std::int64_t sliceAmount(Pool pool, const PoolFields& b, std::int64_t want, std::int64_t atLeast,
                         std::int64_t permille) {
    auto pos = [](std::int64_t v) { return std::max<std::int64_t>(v, 0); };
    const std::int64_t free =
        pool == Pool::CreditsNew ? pos(b.creditsNew) : pos(b.credits) + pos(b.refCredits);
    permille = std::clamp<std::int64_t>(permille, 0, 1000);
    const std::int64_t share = free / 1000 * permille + free % 1000 * permille / 1000;
    const std::int64_t amount = std::min(pos(want), share);
    return amount > 0 && amount >= atLeast ? amount : 0;
}

SliceSettlement settleAgainstSlice(Pool pool, std::int64_t cost, std::int64_t share,
                                   const PoolFields& held, const PoolFields& b) {
    cost = std::max<std::int64_t>(cost, 0);
    std::int64_t fromSlice = std::min(cost, std::max<std::int64_t>(share, 0));
    // The part of the slice this charge consumes, field by field; the slice
    // keeps the rest.
    PoolFields used;
    if (pool == Pool::CreditsNew) {
        used.creditsNew = std::min(fromSlice, std::max<std::int64_t>(held.creditsNew, 0));
    } else {
        used.credits = std::min(fromSlice, std::max<std::int64_t>(held.credits, 0));
        used.refCredits =
            std::min(fromSlice - used.credits, std::max<std::int64_t>(held.refCredits, 0));
    }
    SliceSettlement out;
    out.heldAfter = {held.credits - used.credits, held.refCredits - used.refCredits,
                     held.creditsNew - used.creditsNew};
    // The consumed part acts as a hold of exactly that much: the cost beyond
    // it comes from the balance, nothing goes back.
    out.settlement = settleAgainst(pool, cost, used, b);
    return out;
}

} // namespace trollproxy::internal
