// FairTimedMutex: free-for-all while nobody waits long, arrival order once someone has.
#include "core/fair_mutex.hpp"

namespace trollproxy::internal {

bool FairTimedMutex::starving(std::chrono::steady_clock::time_point now) const {
    return !queue_.empty() && now - queue_.front()->since >= kHandOffAfter;
}

bool FairTimedMutex::lockFor(std::chrono::milliseconds wait) {
    std::unique_lock lock(m_);
    auto now = std::chrono::steady_clock::now();
    if (!locked_ && !starving(now)) {
        locked_ = true;
        return true;
    }
    Waiter me;
    me.since = now;
    auto it = queue_.insert(queue_.end(), &me);
    // Woken when handed the mutex, or (as the oldest waiter) when it came free.
    bool got = me.cv.wait_until(lock, now + wait,
                                [&] { return me.granted || (!locked_ && queue_.front() == &me); });
    if (got) {
        if (!me.granted) {
            queue_.erase(it);
            locked_ = true;
        }
        return true;
    }
    bool wasFront = queue_.front() == &me;
    queue_.erase(it);
    if (wasFront && !locked_ && !queue_.empty())
        queue_.front()->cv.notify_one();
    return false;
}

void FairTimedMutex::unlock() {
    std::lock_guard lock(m_);
    if (queue_.empty()) {
        locked_ = false;
        return;
    }
    Waiter* next = queue_.front();
    if (starving(std::chrono::steady_clock::now())) {
        queue_.pop_front();
        next->granted = true; // locked_ stays true: ownership passes to it
    } else {
        locked_ = false; // it competes with threads arriving now
    }
    next->cv.notify_one();
}

} // namespace trollproxy::internal
