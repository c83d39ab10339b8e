// Pricing: the exact cost of a usage under a model's price table.
#pragma once

#include "trollproxy/config.hpp"
#include "trollproxy/money.hpp"
#include "trollproxy/usage.hpp"

namespace trollproxy {

/// cost = (uncached × input + output × output + 5-minute cache writes × write +
/// 1-hour cache writes × write_1h + cacheRead × read) / 1e6 × multiplier,
/// computed exactly and rounded once, half up, to the nano-dollar. Exact for up
/// to 10^9 tokens of each kind.
Money priceUsage(const PriceTable& prices, const Usage& usage);

} // namespace trollproxy
