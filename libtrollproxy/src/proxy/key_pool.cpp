// Rotation and cool-down of upstream keys.
#include "proxy/key_pool.hpp"

namespace trollproxy::internal {

std::vector<std::size_t> KeyPool::usable(std::int64_t nowMs) {
    std::lock_guard lock(mutex_);
    std::vector<std::size_t> out;
    std::size_t n = keys_.size();
    for (std::size_t k = 0; k < n; ++k) {
        std::size_t i = (next_ + k) % n;
        if (until_[i] <= nowMs)
            out.push_back(i);
    }
    if (n)
        next_ = (next_ + 1) % n;
    return out;
}

void KeyPool::coolDown(std::size_t i, std::int64_t untilMs) {
    std::lock_guard lock(mutex_);
    if (untilMs > until_[i])
        until_[i] = untilMs;
    aside_[i] = false;
}

void KeyPool::setAside(std::size_t i, std::int64_t untilMs) {
    std::lock_guard lock(mutex_);
    until_[i] = untilMs;
    aside_[i] = true;
}

KeyPool::State KeyPool::state(std::size_t i, std::int64_t nowMs) {
    std::lock_guard lock(mutex_);
    if (until_[i] <= nowMs)
        return State::Active;
    return aside_[i] ? State::SetAside : State::CoolingDown;
}

std::int64_t KeyPool::soonestMs(std::int64_t nowMs) {
    std::lock_guard lock(mutex_);
    std::int64_t best = 0;
    for (auto u : until_) {
        if (u > nowMs && (best == 0 || u - nowMs < best))
            best = u - nowMs;
    }
    return best;
}

} // namespace trollproxy::internal
