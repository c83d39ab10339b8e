// Exact pricing with one rounding, half up, to the nano-dollar.
#include "trollproxy/pricing.hpp"

#include "core/int128.hpp"

#include <algorithm>
#include <limits>
#include <utility>

namespace trollproxy {

namespace {

using internal::Int128;

// Past this magnitude the cost is above INT64_MAX whatever the multiplier (≥ 1e-9),
// so intermediate values saturate here instead of overflowing.
constexpr Int128 kCap = Int128{1} << 120;

Int128 clampToCap(Int128 v) {
    return v > kCap ? kCap : v < -kCap ? -kCap : v;
}

// a × b for |a|, |b| ≤ kCap, saturated to ±kCap.
Int128 mulSat(Int128 a, Int128 b) {
    if (a == 0 || b == 0)
        return 0;
    Int128 ua = a < 0 ? -a : a;
    Int128 ub = b < 0 ? -b : b;
    Int128 p = ua > kCap / ub ? kCap : ua * ub;
    return (a < 0) != (b < 0) ? -p : p;
}

} // namespace

Money priceUsage(const PriceTable& p, const Usage& u) {
    // Σ tokens × nano-USD per Mtok: ≤ 4 × 1e9 × ~1e13 = 4e22 for real usages; absurd
    // counts (an upstream's garbage) saturate rather than overflow.
    Int128 perMtok = 0;
    const std::int64_t writes1h = std::min(std::max<std::int64_t>(u.cacheWrite1h, 0), u.cacheWrite);
    const std::int64_t price1h = p.cacheWrite1h ? p.cacheWrite1h->nanos : 2 * p.input.nanos;
    for (auto [tokens, price] :
         {std::pair{u.uncachedInput, p.input.nanos}, std::pair{u.output, p.output.nanos},
          std::pair{u.cacheWrite - writes1h, p.cacheWrite.nanos}, std::pair{writes1h, price1h},
          std::pair{u.cacheRead, p.cacheRead.nanos}})
        perMtok = clampToCap(perMtok + mulSat(tokens, price));
    // × multiplier (billionths) / (1e6 tokens per Mtok × 1e9 billionths).
    Int128 numerator = mulSat(perMtok, p.multiplier.billionths);
    const Int128 denominator = static_cast<Int128>(1'000'000) * 1'000'000'000;
    bool negative = numerator < 0;
    if (negative)
        numerator = -numerator;
    Int128 q = (numerator + denominator / 2) / denominator; // half up (away from zero)
    if (q > std::numeric_limits<std::int64_t>::max())
        q = std::numeric_limits<std::int64_t>::max();
    auto n = static_cast<std::int64_t>(q);
    return Money{negative ? -n : n};
}

} // namespace trollproxy
