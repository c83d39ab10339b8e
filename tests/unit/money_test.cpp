// Tests of exact money parsing and formatting (core/money).
#include <doctest/doctest.h>

#include "trollproxy/money.hpp"

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
