// Tests of core/pricing: exact costs, one rounding half up, saturation, 1-hour cache writes.
#include <doctest/doctest.h>

#include "trollproxy/money.hpp"
#include "trollproxy/pricing.hpp"

using namespace trollproxy;

namespace {
PriceTable sonnet() {
    return PriceTable{*Money::parse("3.0"), *Money::parse("15.0"), *Money::parse("3.75"),
                      *Money::parse("0.3"), *Factor::parse("1.1")};
}
} // namespace

TEST_CASE("pricing: the reference example costs exactly 0.023100000") {
    Usage u{1000, 2000, 10000, 500, false};
    CHECK(priceUsage(sonnet(), u).toString() == "0.023100000");
}

TEST_CASE("pricing rounds once, half up, to the nano-dollar") {
    PriceTable p{*Money::parse("1"), {}, {}, {}, *Factor::parse("1")};
    // 1 token at $1/Mtok = 1e-6 USD = 1000 nanos exactly.
    CHECK(priceUsage(p, Usage{1, 0, 0, 0}).nanos == 1000);
    // $0.0005/Mtok x 1 token = 0.5 nano -> rounds up to 1.
    p.input = *Money::parse("0.0005");
    CHECK(priceUsage(p, Usage{1, 0, 0, 0}).nanos == 1);
    // 0.4999 nano -> 0.
    p.input = *Money::parse("0.0004999");
    CHECK(priceUsage(p, Usage{1, 0, 0, 0}).nanos == 0);
    // No intermediate rounding: 3 tokens x 0.0004999 = 1.4997 nanos -> 1, not 0.
    CHECK(priceUsage(p, Usage{3, 0, 0, 0}).nanos == 1);
    // The multiplier applies to the exact sum: 1 token at $0.0005 x 1.1 = 0.55 -> 1.
    p.input = *Money::parse("0.0005");
    p.multiplier = *Factor::parse("1.1");
    CHECK(priceUsage(p, Usage{1, 0, 0, 0}).nanos == 1);
}

TEST_CASE("pricing does not overflow at 10^9 tokens of each kind") {
    PriceTable p{*Money::parse("1000"), *Money::parse("1000"), *Money::parse("1000"),
                 *Money::parse("1000"), *Factor::parse("10")};
    const std::int64_t g = 1'000'000'000;
    // 4e9 tokens x $1000/Mtok x 10 = $40,000,000.
    CHECK(priceUsage(p, Usage{g, g, g, g}).toString() == "40000000.000000000");
}

TEST_CASE("pricing saturates absurd usages instead of overflowing (found by fuzz_usage)") {
    const Money top{1'000'000 * Money::kNanosPerUsd}; // the highest price a config accepts
    PriceTable p{top, top, top, top, Factor{1000 * Money::kNanosPerUsd}};
    CHECK(priceUsage(p, Usage{0, 0, 0, 1'500'000'000'000'000}).nanos == INT64_MAX);
    CHECK(priceUsage(p, Usage{INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX}).nanos == INT64_MAX);
    // Exact up to the limit: 9223372 tokens x $1/token x 1000 = $9,223,372,000; one more saturates.
    CHECK(priceUsage(p, Usage{9'223'372, 0, 0, 0}).toString() == "9223372000.000000000");
    CHECK(priceUsage(p, Usage{9'223'373, 0, 0, 0}).nanos == INT64_MAX);
}

TEST_CASE("pricing: 1-hour cache writes at their own price, 2 x input by default") {
    PriceTable p{*Money::parse("3"), *Money::parse("15"), *Money::parse("3.75"),
                 *Money::parse("0.3"), *Factor::parse("1")};
    Usage u;
    u.cacheWrite = 1000;
    u.cacheWrite1h = 400;
    // 600 x $3.75 + 400 x $6 (2 x input) per Mtok.
    CHECK(priceUsage(p, u).toString() == "0.004650000");
    p.cacheWrite1h = *Money::parse("7.5");
    CHECK(priceUsage(p, u).toString() == "0.005250000"); // 600 x 3.75 + 400 x 7.5
    // More 1-hour writes than writes: all of them are 1-hour; a negative count: none.
    u.cacheWrite1h = 5000;
    CHECK(priceUsage(p, u).toString() == "0.007500000");
    u.cacheWrite1h = -5;
    CHECK(priceUsage(p, u).toString() == "0.003750000");
}

TEST_CASE("pricing: each token kind at its own price, then the multiplier") {
    PriceTable p{*Money::parse("1"), *Money::parse("2"), *Money::parse("4"), *Money::parse("8"),
                 *Factor::parse("1.5")};
    CHECK(priceUsage(p, Usage{1'000'000, 0, 0, 0}).toString() == "1.500000000");
    CHECK(priceUsage(p, Usage{0, 0, 0, 1'000'000}).toString() == "3.000000000");
    CHECK(priceUsage(p, Usage{0, 1'000'000, 0, 0}).toString() == "6.000000000");
    CHECK(priceUsage(p, Usage{0, 0, 1'000'000, 0}).toString() == "12.000000000");
    // 1 + 2 + 4 + 8 nanos x 1.5 = 22.5 nanos, rounded once: 23.
    PriceTable tiny{*Money::parse("0.001"), *Money::parse("0.002"), *Money::parse("0.004"),
                    *Money::parse("0.008"), *Factor::parse("1.5")};
    CHECK(priceUsage(tiny, Usage{1, 1, 1, 1}).nanos == 23);
}
