// Exact decimal parsing and formatting of Money and Factor.
#include "trollproxy/money.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "core/int128.hpp"

namespace trollproxy {

namespace {

// A number's text read exactly: (negative ? -1 : 1) * digits * 10^exponent.
struct Decimal {
    bool negative = false;
    std::string digits; // without leading zeros; "" for zero
    long exponent = 0;
};

// Reads the digits of an exponent, from text[i] on (after the 'e'), into `exponent`.
// False when there are none.
bool readExponent(std::string_view text, std::size_t& i, long& exponent) {
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
    exponent += expNegative ? -e : e;
    return expDigit;
}

// Reads [sign] digits [. digits] [e [sign] digits], which must be the whole text.
bool readDecimal(std::string_view text, Decimal& d) {
    std::size_t i = 0;
    if (i < text.size() && (text[i] == '-' || text[i] == '+')) {
        d.negative = text[i] == '-';
        ++i;
    }
    bool sawDigit = false;
    bool sawPoint = false;
    for (; i < text.size(); ++i) {
        char c = text[i];
        if (c >= '0' && c <= '9') {
            sawDigit = true;
            if (!(d.digits.empty() && c == '0'))
                d.digits.push_back(c);
            if (sawPoint)
                --d.exponent;
        } else if (c == '.' && !sawPoint) {
            sawPoint = true;
        } else {
            break;
        }
    }
    if (!sawDigit)
        return false;
    if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
        ++i;
        if (!readExponent(text, i, d.exponent))
            return false;
    }
    return i == text.size();
}

// Parses JSON-number text into value * 10^-9, exactly, or fails.
Result<std::int64_t> parseBillionths(std::string_view text) {
    auto bad = [&](const char* why) {
        return Error{ErrorCode::InvalidArgument,
                     std::string(why) + ": \"" + std::string(text) + "\""};
    };
    Decimal d;
    if (!readDecimal(text, d))
        return bad("not a number");
    std::string& digits = d.digits;
    if (digits.empty())
        return std::int64_t{0};
    // Drop trailing zeros into the exponent, then scale to billionths.
    while (!digits.empty() && digits.back() == '0') {
        digits.pop_back();
        ++d.exponent;
    }
    long scale = d.exponent + 9;
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
    return d.negative ? -r : r;
}

std::string formatBillionths(std::int64_t v) {
    bool negative = v < 0;
    // Work in unsigned to format INT64_MIN safely.
    unsigned long long u =
        negative ? 0ULL - static_cast<unsigned long long>(v) : static_cast<unsigned long long>(v);
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
