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
    /// Milliseconds on a clock that never goes back (rate limits, key
    /// cool-downs, latencies, deadlines).
    virtual std::int64_t steadyMs() const = 0;
};

/// The system's clocks.
std::shared_ptr<const Clock> systemClock();

} // namespace trollproxy
