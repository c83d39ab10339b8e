// KeyPool: a set of upstream keys, rotated, cooled down on 429 and set aside when spent.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace trollproxy::internal {

/// Thread-safe. Times are steady-clock milliseconds supplied by the caller.
class KeyPool {
public:
    enum class State { Active, CoolingDown, SetAside };

    explicit KeyPool(std::vector<std::string> keys)
        : keys_(std::move(keys)), until_(keys_.size(), 0), aside_(keys_.size(), false) {}

    std::size_t size() const { return keys_.size(); }
    const std::string& key(std::size_t i) const { return keys_[i]; }

    /// Usable keys in rotation order, starting after the last one handed out.
    std::vector<std::size_t> usable(std::int64_t nowMs);

    /// A 429: not used again before `untilMs`.
    void coolDown(std::size_t i, std::int64_t untilMs);
    /// Spent or refused (401/402/403, budget exceeded): out until `untilMs`.
    void setAside(std::size_t i, std::int64_t untilMs);

    State state(std::size_t i, std::int64_t nowMs);
    /// Milliseconds until the first cooling key is usable again (0 if none).
    std::int64_t soonestMs(std::int64_t nowMs);

private:
    std::mutex mutex_;
    std::vector<std::string> keys_;
    std::vector<std::int64_t> until_;
    std::vector<bool> aside_;
    std::size_t next_ = 0;
};

} // namespace trollproxy::internal
