// Tests of exact money parsing, formatting and pricing.
#include <doctest/doctest.h>

#include "trollproxy/money.hpp"
#include "trollproxy/pricing.hpp"

using namespace trollproxy;

TEST_CASE("Money parses decimal text exactly") {
    CHECK(Money::parse("0.13")->nanos == 130'000'000);
    CHECK(Money::parse("3.75")->nanos == 3'750'000'000);
    CHECK(Money::parse("14.00")->nanos == 14'000'000'000);
    CHECK(Money::parse("0")->nanos == 0);
    CHECK(Money::parse("0.000000001")->nanos == 1);
    CHECK(Money::parse("1e-3")->nanos == 1'000'000);
    CHECK(Money::parse("1.5E2")->nanos == 150'000'000'000);
    CHECK(Money::parse("-2.5")->nanos == -2'500'000'000);
    CHECK(Money::parse("0.1000000000000")->nanos == 100'000'000);
    CHECK(Money::parse("9223372036.854775807")->nanos == 9'223'372'036'854'775'807);
}

TEST_CASE("Money rejects what it cannot hold exactly") {
    CHECK_FALSE(Money::parse("0.0000000001"));
    CHECK_FALSE(Money::parse("1e-10"));
    CHECK_FALSE(Money::parse("9223372036.854775808"));
    CHECK_FALSE(Money::parse("1e400"));
    CHECK_FALSE(Money::parse("abc"));
    CHECK_FALSE(Money::parse(""));
    CHECK_FALSE(Money::parse("1.2.3"));
    CHECK_FALSE(Money::parse("1e"));
    CHECK(Money::parse("0.0000000001").error().message.find("9 decimal") != std::string::npos);
}

TEST_CASE("Money formats with 9 decimals") {
    CHECK(Money{23'100'000}.toString() == "0.023100000");
    CHECK(Money{1}.toString() == "0.000000001");
    CHECK(Money{-1'500'000'000}.toString() == "-1.500000000");
    CHECK(Money{0}.toString() == "0.000000000");
    CHECK(Money{INT64_MIN}.toString() == "-9223372036.854775808");
}

TEST_CASE("Money converts to and from doubles only at the boundary") {
    CHECK(Money::fromUsdDouble(0.0231).nanos == 23'100'000);
    CHECK(Money::fromUsdDouble(Money{123'456'789'123}.toUsdDouble()).nanos == 123'456'789'123);
    CHECK(Money::fromUsdDouble(1e30).nanos == INT64_MAX);
}

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
