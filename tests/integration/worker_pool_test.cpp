// Worker threads on demand: a proxy configured for thousands of streams starts none while idle,
// grows with the streams, never past worker_threads, and gives threads and memory back after.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>

#include <doctest/doctest.h>

#include "harness.hpp"

using namespace harness;

namespace {

using Clock = std::chrono::steady_clock;

std::string config(int workers) {
    return R"({"port": 8000, "endpoints": [{"name": "oai", "base_url": "UPSTREAM/v1/chat/completions"}],
  "models": [{"id": "m", "billing_upstream": "openhands", "output_price_per_mtok": 1}],
  "trollproxy": {"worker_threads": )" +
           std::to_string(workers) + R"(, "rate_limit_per_minute": 1000000}})";
}

const char* kStream = R"({"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]})";

/// A field of /proc/PID/status ("Threads", "VmRSS" in KiB); -1 when the process is gone.
long statusField(pid_t pid, const std::string& name) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind(name + ":", 0) == 0)
            return std::stol(line.substr(name.size() + 1));
    }
    return -1;
}

/// Raises the open-file limit to the hard one and returns it: the server
/// reserves 4 descriptors per worker thread out of it.
rlim_t raiseFileLimit() {
    rlimit files{};
    ::getrlimit(RLIMIT_NOFILE, &files);
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
    return files.rlim_cur;
}

/// Samples the proxy's threads and RSS while a load runs.
class Sampler {
public:
    explicit Sampler(pid_t pid)
        : thread_([this, pid] {
              while (!stop_) {
                  peakThreads_ = std::max(peakThreads_.load(), statusField(pid, "Threads"));
                  peakRssKiB_ = std::max(peakRssKiB_.load(), statusField(pid, "VmRSS"));
                  std::this_thread::sleep_for(std::chrono::milliseconds(20));
              }
          }) {}
    ~Sampler() { finish(); }
    void finish() {
        stop_ = true;
        if (thread_.joinable())
            thread_.join();
    }
    long peakThreads() const { return peakThreads_; }
    long peakRssKiB() const { return peakRssKiB_; }

private:
    std::atomic<bool> stop_{false};
    std::atomic<long> peakThreads_{0}, peakRssKiB_{0};
    std::thread thread_;
};

/// Runs `n` streaming requests at once; returns how many ended 200 with [DONE].
int streamsAtOnce(int port, const std::string& key, int n) {
    std::atomic<int> ok{0};
    std::vector<std::thread> clients;
    for (int i = 0; i < n; ++i) {
        clients.emplace_back([&] {
            auto r = post(port, "/v1/chat/completions", kStream,
                          {{"Authorization", "Bearer " + key}}, 60);
            if (r.status == 200 && r.body.find("[DONE]") != std::string::npos)
                ++ok;
        });
    }
    for (auto& c : clients)
        c.join();
    return ok;
}

/// Waits up to `seconds` for the proxy's thread count to fall to `n`.
long threadsFallTo(pid_t pid, long n, double seconds) {
    auto end = Clock::now() + std::chrono::duration<double>(seconds);
    long now = statusField(pid, "Threads");
    while (now > n && Clock::now() < end) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        now = statusField(pid, "Threads");
    }
    return now;
}

} // namespace

TEST_CASE("worker threads start as streams arrive and exit when idle, and RSS follows") {
    // 4,096 workers when the descriptor limit allows the reserve for them.
    rlim_t files = raiseFileLimit();
    int workers = files >= 4 * 4096 + 2000 ? 4096 : static_cast<int>((files - 1000) / 4);
    REQUIRE(workers >= 200);
    // 2-second streams, so that all of them overlap.
    Stack s(config(workers), {}, {"--chunks", "20", "--chunk-delay-ms", "100"});
    auto key = s.userWithKey("u", "0", "0", "100");
    pid_t pid = s.proxy->pid();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    long idleThreads = statusField(pid, "Threads");
    long idleRss = statusField(pid, "VmRSS");
    MESSAGE("idle: " << idleThreads << " threads, " << idleRss << " KiB, worker_threads "
                     << workers);
    CHECK(idleThreads < 32); // none of the workers yet

    const int streams = 150;
    Sampler sampler(pid);
    CHECK(streamsAtOnce(s.proxy->port(), key, streams) == streams);
    sampler.finish();
    MESSAGE("peak: " << sampler.peakThreads() << " threads, " << sampler.peakRssKiB() << " KiB");
    CHECK(sampler.peakThreads() >= idleThreads + streams / 2);
    CHECK(sampler.peakThreads() <= idleThreads + streams + 2);

    // Workers exit 5 s after their last request; a generous bound.
    long after = threadsFallTo(pid, idleThreads, 30);
    CHECK(after <= idleThreads);
    long warmRss = statusField(pid, "VmRSS");
    MESSAGE("after: " << after << " threads, " << warmRss << " KiB");

    // The same burst again, now that the ledger's connections and caches have
    // grown to it: what stays after this one is what the workers kept.
    Sampler again(pid);
    CHECK(streamsAtOnce(s.proxy->port(), key, streams) == streams);
    again.finish();
    CHECK(again.peakThreads() >= idleThreads + streams / 2); // the pool grew again
    CHECK(threadsFallTo(pid, idleThreads, 30) <= idleThreads);
    long afterRss = statusField(pid, "VmRSS");
    MESSAGE("second burst: peak " << again.peakRssKiB() << " KiB, after " << afterRss << " KiB");
    // Most of what the burst took is given back (stacks unmapped, arenas trimmed).
    CHECK(afterRss - warmRss < (again.peakRssKiB() - warmRss) / 2);
}

TEST_CASE("requests beyond worker_threads wait for a free worker and are served") {
    Stack s(config(4), {}, {"--chunks", "10", "--chunk-delay-ms", "100"});
    auto key = s.userWithKey("u", "0", "0", "100");
    pid_t pid = s.proxy->pid();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    long idleThreads = statusField(pid, "Threads");
    Sampler sampler(pid);
    CHECK(streamsAtOnce(s.proxy->port(), key, 12) == 12);
    sampler.finish();
    CHECK(sampler.peakThreads() == idleThreads + 4);
}

TEST_CASE("the worker stack holds the deepest JSON accepted, and large bodies") {
    Stack s(config(8));
    auto key = s.userWithKey("u", "0", "0", "100");
    auto nested = [](int depth, const char* open, const char* close) {
        std::string v;
        for (int i = 0; i < depth; ++i)
            v += open;
        v += "1";
        for (int i = 0; i < depth; ++i)
            v += close;
        return v;
    };
    auto send = [&](const std::string& extra) {
        std::string body =
            R"({"model":"m","x":)" + extra + R"(,"messages":[{"role":"user","content":"hi"}]})";
        return post(s.proxy->port(), "/v1/chat/completions", body,
                    {{"Authorization", "Bearer " + key}})
            .status;
    };
    CHECK(send(nested(1000, "[", "]")) == 200);
    CHECK(send(nested(1000, "{\"a\":", "}")) == 200);
    // Deeper than the parsers take: refused, not a crash.
    CHECK(send(nested(100'000, "[", "]")) == 400);
    CHECK(send(nested(100'000, "{\"a\":", "}")) == 400);
    CHECK(send("\"" + std::string(8 * 1024 * 1024, 'x') + "\"") == 200);
    CHECK(s.proxy->running());
    CHECK(get(s.proxy->port(), "/health").status == 200);
}
