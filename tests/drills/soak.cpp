// Drill: a long mixed load; RSS, open descriptors and threads must stay flat, and billing exact.
#include <algorithm>
#include <thread>

#include "drill.hpp"

using namespace trollproxy;

namespace drills {

int soakDrill(const Options& o) {
    Verdict v("soak: " + std::to_string(static_cast<int>(o.soakSeconds)) + " s of mixed load");
    // 32 workers: each keeps its idle upstream connection (curl cache), so the
    // descriptor baseline settles within the first round.
    DrillStack s(
        R"("rate_limit_per_minute": 0, "first_byte_timeout_ms": 1000, "idle_timeout_ms": 1000, "worker_threads": 32)");
    Money start = *Money::parse("1000");
    std::string key = s.userWithKey("u", start);
    pid_t pid = s.proxy->pid();
    Tally tally;
    warmUp(s, key, tally);
    int idleFds0 = openFds(pid), threads0 = threadCount(pid);
    FdCensus census0 = fdCensus(pid);
    std::int64_t idleRss0 = rssKb(pid);
    const int clients = 12;
    std::atomic<bool> stop{false};
    double t0 = now();
    std::thread load([&] {
        runLoad(
            clients, 0, stop, [&](int c, int n) { return faultShot(key, c, n); },
            [&] { return s.port(); }, tally);
    });
    double every = std::max(2.0, o.soakSeconds / 30);
    double warm = std::max(5.0, o.soakSeconds / 10);
    std::int64_t warmRss = 0;
    int maxFds = 0;
    std::vector<std::pair<double, std::int64_t>> samples;
    std::printf("  %8s %10s %6s %8s %10s\n", "t (s)", "RSS (kB)", "fds", "threads", "requests");
    while (now() - t0 < o.soakSeconds) {
        std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(every * 1000)));
        double t = now() - t0;
        std::int64_t rss = rssKb(pid);
        int fds = openFds(pid);
        std::size_t n;
        {
            std::lock_guard l(tally.mutex);
            n = tally.outcomes.size();
        }
        std::printf("  %8.0f %10lld %6d %8d %10zu\n", t, static_cast<long long>(rss), fds,
                    threadCount(pid), n);
        std::fflush(stdout);
        if (t >= warm) {
            if (!warmRss)
                warmRss = rss;
            samples.emplace_back(t, rss);
            maxFds = std::max(maxFds, fds);
        }
    }
    stop = true;
    load.join();
    double took = now() - t0;
    std::this_thread::sleep_for(std::chrono::seconds(3));
    std::int64_t endRss = rssKb(pid);
    int idleFds1 = openFds(pid), threads1 = threadCount(pid);
    // Least-squares slope of RSS after the warm-up, in kB per minute.
    double slope = 0;
    if (samples.size() >= 2) {
        double mt = 0, mr = 0;
        for (auto [t, r] : samples) {
            mt += t;
            mr += static_cast<double>(r);
        }
        mt /= static_cast<double>(samples.size());
        mr /= static_cast<double>(samples.size());
        double num = 0, den = 0;
        for (auto [t, r] : samples) {
            num += (t - mt) * (static_cast<double>(r) - mr);
            den += (t - mt) * (t - mt);
        }
        slope = den > 0 ? num / den * 60 : 0;
    }
    std::printf("  %zu requests in %.0f s (%.1f/s); idle before: RSS %lld kB, %d fds, %d threads; "
                "RSS after warm-up "
                "%lld kB, at the end %lld kB (slope %.1f kB/min); idle after: %d fds, %d threads; "
                "max fds under load %d\n",
                tally.outcomes.size(), took, static_cast<double>(tally.outcomes.size()) / took,
                static_cast<long long>(idleRss0), idleFds0, threads0,
                static_cast<long long>(warmRss), static_cast<long long>(endRss), slope, idleFds1,
                threads1, maxFds);
    checkFds(v, census0, fdCensus(pid), 32);
    v.check(maxFds <= idleFds0 + 4 * clients + 16,
            "descriptors under load bounded by the load's connections");
    v.check(threads1 <= threads0 + 2,
            "threads flat (" + std::to_string(threads0) + " -> " + std::to_string(threads1) + ")");
    v.check(warmRss > 0 && endRss <= warmRss + std::max<std::int64_t>(8 * 1024, warmRss / 10),
            "RSS flat after warm-up (" + std::to_string(warmRss) + " -> " + std::to_string(endRss) +
                " kB)");
    audit(v, s, "u", start, tally.outcomes, false);
    return v.finish();
}

} // namespace drills
