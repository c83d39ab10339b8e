// Exact decimal parsing and formatting of Money and Factor.
#include "trollproxy/money.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "core/int128.hpp"

namespace trollproxy {

namespace {

// Parses JSON-number text into value * 10^-9, exactly, or fails.
Result<std::int64_t> parseBillionths(std::string_view text) {
    auto bad = [&](const char* why) {
        return Error{ErrorCode::InvalidArgument, std::string(why) + ": \"" + std::string(text) + "\""};
    };
    std::size_t i = 0;
    bool negative = false;
    if (i < text.size() && (text[i] == '-' || text[i] == '+')) {
        negative = text[i] == '-';
        ++i;
    }
    std::string digits;
    long exponent = 0; // value = digits * 10^exponent
    bool sawDigit = false;
    bool sawPoint = false;
    for (; i < text.size(); ++i) {
        char c = text[i];
        if (c >= '0' && c <= '9') {
            sawDigit = true;
            if (!(digits.empty() && c == '0'))
                digits.push_back(c);
            if (sawPoint)
                --exponent;
        } else if (c == '.' && !sawPoint) {
            sawPoint = true;
        } else {
            break;
        }
    }
    if (!sawDigit)
        return bad("not a number");
    if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
        ++i;
        bool expNegative = false;
        if (i < text.size() && (text[i] == '-' || text[i] == '+')) {
            expNegative = text[i] == '-';
            ++i;
        }
        long e = 0;
        bool expDigit = false;
        for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
            expDigit = true;
            if (e < 100000)
                e = e * 10 + (text[i] - '0');
        }
        if (!expDigit)
            return bad("not a number");
        exponent += expNegative ? -e : e;
    }
    if (i != text.size())
        return bad("not a number");
    if (digits.empty())
        return std::int64_t{0};
    // Drop trailing zeros into the exponent, then scale to billionths.
    while (!digits.empty() && digits.back() == '0') {
        digits.pop_back();
        ++exponent;
    }
    long scale = exponent + 9;
    if (scale < 0)
        return bad("more than 9 decimal places");
    if (static_cast<long>(digits.size()) + scale > 19)
        return bad("out of range");
    internal::Int128 v = 0;
    for (char c : digits)
        v = v * 10 + (c - '0');
    for (long s = 0; s < scale; ++s)
        v *= 10;
    if (v > std::numeric_limits<std::int64_t>::max())
        return bad("out of range");
    auto r = static_cast<std::int64_t>(v);
    return negative ? -r : r;
}

std::string formatBillionths(std::int64_t v) {
    bool negative = v < 0;
    // Work in unsigned to format INT64_MIN safely.
    unsigned long long u = negative ? 0ULL - static_cast<unsigned long long>(v)
                                    : static_cast<unsigned long long>(v);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%llu.%09llu", negative ? "-" : "", u / 1'000'000'000ULL,
                  u % 1'000'000'000ULL);
    return buf;
}

} // namespace

Result<Money> Money::parse(std::string_view text) {
    auto r = parseBillionths(text);
    if (!r)
        return r.error();
    return Money{*r};
}

Money Money::fromUsdDouble(double usd) {
    if (!std::isfinite(usd))
        return Money{0};
    double n = std::round(usd * 1e9);
    if (n >= 9.2e18)
        return Money{std::numeric_limits<std::int64_t>::max()};
    if (n <= -9.2e18)
        return Money{std::numeric_limits<std::int64_t>::min()};
    return Money{static_cast<std::int64_t>(n)};
}

double Money::toUsdDouble() const {
    // Split so both halves convert exactly; the sum rounds once.
    return static_cast<double>(nanos / kNanosPerUsd) +
           static_cast<double>(nanos % kNanosPerUsd) / 1e9;
}

std::string Money::toString() const {
    return formatBillionths(nanos);
}

Result<Factor> Factor::parse(std::string_view text) {
    auto r = parseBillionths(text);
    if (!r)
        return r.error();
    return Factor{*r};
}

std::string Factor::toString() const {
    std::string s = formatBillionths(billionths);
    while (s.back() == '0')
        s.pop_back();
    if (s.back() == '.')
        s.pop_back();
    return s;
}

} // namespace trollproxy
