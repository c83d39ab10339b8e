// ElasticPool: an httplib task queue whose threads start when tasks need them and exit when idle.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <list>
#include <mutex>

#include <httplib.h>
#include <pthread.h>

namespace trollproxy::server {

/// A thread pool that holds no thread it does not need: a task is handed to the
/// thread that went idle last, or to a new thread while fewer than `maxThreads`
/// run; beyond that it waits in a FIFO queue. A thread idle for `idleTimeout`
/// exits. Threads run on `stackBytes` stacks of the pool's own, unmapped once the
/// thread is joined (glibc would keep up to 40 MiB of exited threads' stacks,
/// partly resident); when the pool has shrunk to half its size since the last
/// trim, the freed heap is returned to the OS (malloc_trim).
class ElasticPool final : public httplib::TaskQueue {
public:
    struct Options {
        std::size_t maxThreads = 256;
        std::chrono::milliseconds idleTimeout{5'000};
        /// The request path needs about 150 KiB (1,000-deep JSON in a debug
        /// build); glibc's default is ulimit -s, 8 MiB of address space each.
        /// Only the pages a thread touches are resident.
        std::size_t stackBytes = 1024 * 1024;
        bool trimMemory = true;
    };

    /// What the pool holds now, and since it started.
    struct Stats {
        std::size_t threads = 0; ///< started and not yet exited
        std::size_t idle = 0;    ///< of those, waiting for a task
        std::size_t queued = 0;  ///< tasks waiting for a thread
        std::size_t peakThreads = 0;
        std::size_t started = 0; ///< threads started in all
        std::size_t retired = 0; ///< threads that exited after idleTimeout
        std::size_t startFailures = 0;
        std::size_t trims = 0;
    };

    explicit ElasticPool(Options options);
    ~ElasticPool() override;
    ElasticPool(const ElasticPool&) = delete;
    ElasticPool& operator=(const ElasticPool&) = delete;

    /// Runs `fn` on a pool thread. After shutdown() it is dropped unrun.
    void enqueue(std::function<void()> fn) override;
    /// Runs the queued tasks, lets the running ones finish and joins every
    /// thread. Not to be called from a task.
    void shutdown() override;

    Stats stats() const;

private:
    struct Worker;
    /// A thread that has exited and its stack mapping (guard page included).
    struct Exited {
        pthread_t thread{};
        void* stack = nullptr;
        std::size_t stackSize = 0;
    };

    static void* threadMain(void* worker);
    void work(Worker& w);
    /// Starts a thread for `fn`; false (and `fn` untouched) when none can start.
    bool startThread(std::function<void()>& fn);
    /// Called with the lock held by a thread about to exit.
    void leave(std::unique_lock<std::mutex>& lock, Worker& w);
    /// Joins the thread and unmaps its stack.
    static void reap(const Exited& e);

    const Options options_;
    mutable std::mutex mutex_;
    std::deque<std::function<void()>> queue_;
    std::list<Worker*> idle_; ///< most recently idle first
    std::condition_variable allGone_;
    std::size_t threads_ = 0;
    std::size_t sizeAtTrim_ = 0; ///< the most threads since the last trim
    bool stopping_ = false;
    bool stopped_ = false;
    /// The last thread to exit, joined by the next one to exit (or by shutdown),
    /// so that every thread is joined without a joiner thread.
    bool haveExited_ = false;
    Exited exited_;
    Stats counts_;
};

} // namespace trollproxy::server
