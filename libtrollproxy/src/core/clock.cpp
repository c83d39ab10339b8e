// The system clock behind the Clock interface.
#include "trollproxy/clock.hpp"

#include <chrono>

namespace trollproxy {

namespace {

class SystemClock final : public Clock {
public:
    std::int64_t wallMs() const override {
        using namespace std::chrono;
        return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
    }
    std::int64_t steadyNs() const override {
        using namespace std::chrono;
        return duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count();
    }
};

} // namespace

std::shared_ptr<const Clock> systemClock() {
    static const std::shared_ptr<const Clock> clock = std::make_shared<SystemClock>();
    return clock;
}

} // namespace trollproxy
