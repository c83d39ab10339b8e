// A sliding-window request counter per key.
#include "proxy/rate_limiter.hpp"

#include <iterator>

namespace trollproxy::internal {

RateDecision RateLimiter::check(const std::string& key, std::int64_t nowMs) {
    constexpr std::int64_t kWindowMs = 60'000;
    RateDecision d;
    d.limit = limit_;
    if (limit_ <= 0) {
        d.remaining = 0;
        return d;
    }
    std::int64_t start = nowMs - nowMs % kWindowMs;
    std::lock_guard lock(mutex_);
    if (windows_.size() > 100'000) {
        // Forget keys idle for two windows so the map stays bounded.
        for (auto it = windows_.begin(); it != windows_.end();)
            it = it->second.start < start - kWindowMs ? windows_.erase(it) : std::next(it);
    }
    Window& w = windows_[key];
    if (w.start != start) {
        w.previous = w.start == start - kWindowMs ? w.current : 0;
        w.current = 0;
        w.start = start;
    }
    std::int64_t elapsed = nowMs - start;
    // Weighted count of the last 60 s, in thousandths to stay in integers.
    std::int64_t weighted = w.previous * (kWindowMs - elapsed) / kWindowMs + w.current;
    d.resetSeconds = (kWindowMs - elapsed + 999) / 1000;
    if (weighted >= limit_) {
        d.allowed = false;
        d.remaining = 0;
        d.retryAfterSeconds = d.resetSeconds > 0 ? d.resetSeconds : 1;
        return d;
    }
    ++w.current;
    d.remaining = limit_ - weighted - 1;
    return d;
}

} // namespace trollproxy::internal
