// Exact pricing with one rounding, half up, to the nano-dollar.
#include "trollproxy/pricing.hpp"

#include "core/int128.hpp"

#include <limits>

namespace trollproxy {

Money priceUsage(const PriceTable& p, const Usage& u) {
    // Σ tokens × nano-USD per Mtok: ≤ 4 × 1e9 × ~1e13 = 4e22, fits in int128.
    internal::Int128 perMtok = static_cast<internal::Int128>(u.uncachedInput) * p.input.nanos +
                       static_cast<internal::Int128>(u.output) * p.output.nanos +
                       static_cast<internal::Int128>(u.cacheWrite) * p.cacheWrite.nanos +
                       static_cast<internal::Int128>(u.cacheRead) * p.cacheRead.nanos;
    // × multiplier (billionths) / (1e6 tokens per Mtok × 1e9 billionths).
    internal::Int128 numerator = perMtok * p.multiplier.billionths;
    const internal::Int128 denominator = static_cast<internal::Int128>(1'000'000) * 1'000'000'000;
    bool negative = numerator < 0;
    if (negative)
        numerator = -numerator;
    internal::Int128 q = (numerator + denominator / 2) / denominator; // half up (away from zero)
    if (q > std::numeric_limits<std::int64_t>::max())
        q = std::numeric_limits<std::int64_t>::max();
    auto n = static_cast<std::int64_t>(q);
    return Money{negative ? -n : n};
}

} // namespace trollproxy
