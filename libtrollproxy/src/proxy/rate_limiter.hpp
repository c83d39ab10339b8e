// RateLimiter: requests per minute per API key, as a sliding window.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace trollproxy::internal {

/// The answer for one request.
struct RateDecision {
    bool allowed = true;
    std::int64_t limit = 0;
    std::int64_t remaining = 0;
    std::int64_t resetSeconds = 0;      ///< until the current window ends
    std::int64_t retryAfterSeconds = 0; ///< when refused
};

/// Sliding window approximated from two fixed one-minute windows (the previous
/// window's count weighted by how much of it still overlaps). Thread-safe.
class RateLimiter {
public:
    /// `perMinute` 0 disables limiting.
    explicit RateLimiter(std::int64_t perMinute) : limit_(perMinute) {}

    RateDecision check(const std::string& key, std::int64_t nowMs);

private:
    struct Window {
        std::int64_t start = 0;
        std::int64_t current = 0;
        std::int64_t previous = 0;
    };
    std::int64_t limit_;
    std::mutex mutex_;
    std::unordered_map<std::string, Window> windows_;
};

} // namespace trollproxy::internal
