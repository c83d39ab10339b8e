// Money: exact integer USD amounts in nano-USD (1e-9 USD).
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include "trollproxy/result.hpp"

namespace trollproxy {

/// An amount of US dollars as a whole number of nano-dollars. Never a double.
struct Money {
    std::int64_t nanos = 0;

    static constexpr std::int64_t kNanosPerUsd = 1'000'000'000;

    static constexpr Money fromNanos(std::int64_t n) { return Money{n}; }

    /// Parses decimal text ("3.75", "0.000000001", "1e-3", "12") exactly.
    /// More than 9 decimal places, or a value out of range, is an error.
    static Result<Money> parse(std::string_view text);

    /// Converts a stored double (MongoDB's USD fields) to the nearest nano-dollar.
    static Money fromUsdDouble(double usd);

    /// The amount as a double, for storage that needs doubles (MongoDB only).
    double toUsdDouble() const;

    /// "0.023100000": USD with exactly 9 decimals, "-" for negatives.
    std::string toString() const;

    friend constexpr auto operator<=>(Money, Money) = default;
    friend constexpr Money operator+(Money a, Money b) { return Money{a.nanos + b.nanos}; }
    friend constexpr Money operator-(Money a, Money b) { return Money{a.nanos - b.nanos}; }
    constexpr Money& operator+=(Money o) {
        nanos += o.nanos;
        return *this;
    }
    constexpr Money& operator-=(Money o) {
        nanos -= o.nanos;
        return *this;
    }
};

/// A non-negative decimal factor (billing multiplier) with 9 decimals, e.g. 1.1.
struct Factor {
    std::int64_t billionths = 1'000'000'000;

    /// Parses decimal text exactly, as Money::parse does.
    static Result<Factor> parse(std::string_view text);
    std::string toString() const;
    friend constexpr auto operator<=>(Factor, Factor) = default;
};

} // namespace trollproxy
