// ElasticPool: threads started on demand up to a maximum, handed tasks most-recently-idle first,
// retired after an idle timeout; every thread is joined.
#include "elastic_pool.hpp"

#include <algorithm>
#include <climits>
#include <utility>

#include <sys/mman.h>
#include <unistd.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace trollproxy::server {

/// One pool thread: the task handed to it, and its place in the idle list.
struct ElasticPool::Worker {
    ElasticPool* pool = nullptr;
    void* stack = nullptr;
    std::size_t stackSize = 0;
    std::function<void()> task;
    std::condition_variable wake;
    std::list<Worker*>::iterator idleAt;
    bool idle = false;
};

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
// Sanitizers keep their thread state in static TLS (at the top of the stack)
// and enlarge frames with redzones.
constexpr std::size_t kSanitizerStack = 8 * 1024 * 1024;
#else
constexpr std::size_t kSanitizerStack = 0;
#endif

ElasticPool::Options checked(ElasticPool::Options o) {
    o.maxThreads = std::max<std::size_t>(o.maxThreads, 1);
    return o;
}

} // namespace

ElasticPool::ElasticPool(Options options) : options_(checked(options)) {}

ElasticPool::~ElasticPool() {
    shutdown();
}

void ElasticPool::enqueue(std::function<void()> fn) {
    std::unique_lock lock(mutex_);
    if (stopping_)
        return; // fn is destroyed once the lock is released
    if (!idle_.empty()) {
        // The thread idle for the shortest time: its stack and caches are warm,
        // and the ones idle longest are left to retire.
        Worker* w = idle_.front();
        idle_.pop_front();
        w->idle = false;
        w->task = std::move(fn);
        w->wake.notify_one();
        return;
    }
    if (threads_ < options_.maxThreads) {
        ++threads_;
        ++counts_.started;
        counts_.peakThreads = std::max(counts_.peakThreads, threads_);
        sizeAtTrim_ = std::max(sizeAtTrim_, threads_);
        lock.unlock(); // creating a thread maps its stack: not under the lock
        if (startThread(fn))
            return;
        lock.lock();
        --threads_;
        --counts_.started;
        ++counts_.startFailures;
        if (threads_ == 0)
            allGone_.notify_all();
        if (stopping_)
            return;
        // Left queued: a running thread takes it, or the next enqueue starts one.
    }
    queue_.push_back(std::move(fn));
}

bool ElasticPool::startThread(std::function<void()>& fn) {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    std::size_t usable =
        std::max<std::size_t>(options_.stackBytes, PTHREAD_STACK_MIN) + kSanitizerStack;
    usable = (usable + page - 1) / page * page;
    // A guard page below the stack, as glibc's own stacks have.
    void* stack = ::mmap(nullptr, usable + page, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        return false;
    ::mprotect(stack, page, PROT_NONE);
    auto* w = new Worker;
    w->pool = this;
    w->stack = stack;
    w->stackSize = usable + page;
    w->task = std::move(fn);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstack(&attr, static_cast<char*>(stack) + page, usable);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, &ElasticPool::threadMain, w);
    pthread_attr_destroy(&attr);
    if (rc == 0)
        return true;
    fn = std::move(w->task);
    delete w;
    ::munmap(stack, usable + page);
    return false;
}

void* ElasticPool::threadMain(void* worker) {
    auto& w = *static_cast<Worker*>(worker);
    w.pool->work(w);
    return nullptr;
}

void ElasticPool::work(Worker& w) {
    std::unique_lock lock(mutex_);
    for (;;) {
        if (!w.task && !queue_.empty()) {
            w.task = std::move(queue_.front());
            queue_.pop_front();
        }
        if (!w.task) {
            if (stopping_)
                break;
            idle_.push_front(&w);
            w.idleAt = idle_.begin();
            w.idle = true;
            auto deadline = std::chrono::steady_clock::now() + options_.idleTimeout;
            bool timedOut = false;
            while (!w.task && !stopping_ && !timedOut)
                timedOut = w.wake.wait_until(lock, deadline) == std::cv_status::timeout;
            if (w.idle) {
                idle_.erase(w.idleAt);
                w.idle = false;
            }
            if (!w.task) {
                if (!stopping_)
                    ++counts_.retired;
                break;
            }
        }
        std::function<void()> task = std::move(w.task);
        w.task = nullptr;
        lock.unlock();
        task();
        task = nullptr; // what it captured is released outside the lock
        lock.lock();
    }
    leave(lock, w);
}

void ElasticPool::leave(std::unique_lock<std::mutex>& lock, Worker& w) {
    --threads_;
    bool trim = options_.trimMemory && threads_ * 2 <= sizeAtTrim_;
    if (trim) {
        sizeAtTrim_ = threads_;
        ++counts_.trims;
    }
    bool reapPrevious = haveExited_;
    Exited previous = exited_;
    exited_ = Exited{pthread_self(), w.stack, w.stackSize};
    haveExited_ = true;
    if (threads_ == 0)
        allGone_.notify_all();
    lock.unlock();
    delete &w;
    if (reapPrevious)
        reap(previous);
#ifdef __GLIBC__
    // Threads that exit leave their freed blocks in glibc's arenas; without a
    // trim the process keeps the RSS of its busiest moment.
    if (trim)
        malloc_trim(0);
#endif
}

void ElasticPool::reap(const Exited& e) {
    pthread_join(e.thread, nullptr);
    ::munmap(e.stack, e.stackSize);
}

void ElasticPool::shutdown() {
    std::deque<std::function<void()>> unrun;
    Exited last;
    bool reapLast = false;
    {
        std::unique_lock lock(mutex_);
        if (stopped_)
            return;
        stopping_ = true;
        for (Worker* w : idle_)
            w->wake.notify_one();
        allGone_.wait(lock, [this] { return threads_ == 0; });
        stopped_ = true;
        unrun.swap(queue_); // only when no thread could start for them
        reapLast = haveExited_;
        last = exited_;
        haveExited_ = false;
    }
    if (reapLast)
        reap(last); // which reaped the one before it, and so on
}

ElasticPool::Stats ElasticPool::stats() const {
    std::lock_guard lock(mutex_);
    Stats s = counts_;
    s.threads = threads_;
    s.idle = idle_.size();
    s.queued = queue_.size();
    return s;
}

} // namespace trollproxy::server
