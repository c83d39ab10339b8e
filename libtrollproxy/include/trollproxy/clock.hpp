// Clock: where the library reads the time, so that tests can set it.
#pragma once

#include <cstdint>
#include <memory>

namespace trollproxy {

/// The two times the request path reads. Thread-safe.
class Clock {
public:
    virtual ~Clock() = default;
    /// Milliseconds since the Unix epoch (hold expiries, log timestamps).
    virtual std::int64_t wallMs() const = 0;
    /// Nanoseconds on a clock that never goes back (latencies).
    virtual std::int64_t steadyNs() const = 0;
    /// steadyNs() in milliseconds (rate limits, key cool-downs, deadlines).
    std::int64_t steadyMs() const { return steadyNs() / 1'000'000; }
};

/// The system's clocks.
std::shared_ptr<const Clock> systemClock();

} // namespace trollproxy
