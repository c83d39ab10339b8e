// Tests of proxy/rate_limiter: the sliding-window limit per key, with an injected clock.
#include <doctest/doctest.h>

#include "proxy/rate_limiter.hpp"

using namespace trollproxy::internal;

TEST_CASE("rate limiter: a sliding minute per key") {
    RateLimiter rl(3);
    std::int64_t t = 600'000; // start of a window
    CHECK(rl.check("a", t).remaining == 2);
    CHECK(rl.check("a", t + 1).allowed);
    CHECK(rl.check("a", t + 2).allowed);
    auto refused = rl.check("a", t + 3);
    CHECK_FALSE(refused.allowed);
    CHECK(refused.retryAfterSeconds >= 1);
    CHECK(rl.check("b", t + 3).allowed); // keys are independent
    // Half into the next window, half of the previous window still counts: 1.5 -> 1 of 3 used.
    CHECK(rl.check("a", t + 90'000).allowed);
    CHECK(rl.check("a", t + 90'001).allowed);
    CHECK_FALSE(rl.check("a", t + 90'002).allowed);
    // Two windows later everything is forgotten.
    CHECK(rl.check("a", t + 180'000).remaining == 2);
    RateLimiter off(0);
    for (int i = 0; i < 1000; ++i)
        CHECK(off.check("a", t).allowed);
}
