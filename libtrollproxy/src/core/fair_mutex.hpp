// FairTimedMutex: a mutex no waiter starves on, for locks hundreds of threads queue for.
#pragma once

#include <chrono>
#include <condition_variable>
#include <list>
#include <mutex>

namespace trollproxy::internal {

/// A mutex with a bounded wait that no waiter can starve on. A thread may take
/// it while it is free (fast: no hand-off), unless the oldest waiter has waited
/// longer than `kHandOffAfter`: then each unlock hands the mutex to the oldest
/// waiter, in arrival order, until the queue has caught up.
class FairTimedMutex {
public:
    static constexpr std::chrono::milliseconds kHandOffAfter{50};

    /// Takes the mutex, waiting at most `wait`; false when the wait ran out.
    bool lockFor(std::chrono::milliseconds wait);
    void unlock();

private:
    struct Waiter {
        std::condition_variable cv;
        std::chrono::steady_clock::time_point since;
        bool granted = false;
    };
    bool starving(std::chrono::steady_clock::time_point now) const;

    std::mutex m_;
    bool locked_ = false;
    std::list<Waiter*> queue_;
};

} // namespace trollproxy::internal
