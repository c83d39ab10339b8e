// Drill: upstream failures under load (429 storms, 500s, slow first bytes, cuts, stalls, hang-ups):
// no charge for what was not served, the right charge for what was, no stuck threads, no leak.
#include <map>
#include <set>
#include <thread>

#include "drill.hpp"

using namespace trollproxy;

namespace drills {

namespace {

const Usage kUsage{900, 30, 150, 48, false};

Fault pick(unsigned h) {
    static const Fault kMix[] = {Fault::None,        Fault::None,      Fault::None,   Fault::None,
                                 Fault::None,        Fault::None,      Fault::None,   Fault::SlowOk,
                                 Fault::Status500,   Fault::Status500, Fault::SlowOk, Fault::SlowOk,
                                 Fault::SlowTimeout, Fault::Cut3,      Fault::Cut3,   Fault::Cut0,
                                 Fault::Stall,       Fault::HangUp,    Fault::HangUp, Fault::None};
    return kMix[h % (sizeof kMix / sizeof kMix[0])];
}

unsigned mix(unsigned x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    return x ^ (x >> 16);
}

} // namespace

Shot faultShot(const std::string& key, int c, int n) {
    unsigned h = mix(static_cast<unsigned>(c * 7919 + n * 104729 + 17));
    return makeShot(key, (h >> 8) % 2 == 0, (h >> 9) % 2 == 0, pick(h), kUsage);
}

int upstreamFaultsDrill(const Options& o) {
    Verdict v("upstream faults under load");
    // 32 workers: each keeps its idle upstream connection (curl cache), so the
    // descriptor baseline settles within the first round.
    DrillStack s(
        R"("rate_limit_per_minute": 0, "first_byte_timeout_ms": 1000, "idle_timeout_ms": 1000, "worker_threads": 32)");
    Money start = *Money::parse("100");
    std::string key = s.userWithKey("u", start);
    const int clients = 16, perClient = o.quick ? 12 : 40, rounds = o.quick ? 2 : 4;
    pid_t pid = s.proxy->pid();
    Tally tally;
    warmUp(s, key, tally);
    std::int64_t rss0 = 0, rss1 = 0;
    int fds0 = 0, threads0 = 0;
    FdCensus census0;
    for (int r = 0; r < rounds; ++r) {
        std::atomic<bool> never{false};
        double t0 = now();
        runLoad(
            clients, perClient, never, [&](int c, int n) { return faultShot(key, c + 100 * r, n); },
            [&] { return s.port(); }, tally);
        // A 429 storm: every request rate limited; both keys cool down (Retry-After: 1).
        runLoad(
            clients, 4, never,
            [&](int c, int n) {
                return makeShot(key, (c + n) % 2 == 0, c % 2 == 0, Fault::Status429, kUsage);
            },
            [&] { return s.port(); }, tally);
        std::this_thread::sleep_for(std::chrono::seconds(3)); // cool-downs end, streams wind down
        std::printf("  round %d: %d requests in %.1f s; proxy RSS %lld kB, %d fds, %d threads\n",
                    r + 1, clients * (perClient + 4), now() - t0 - 3,
                    static_cast<long long>(rssKb(pid)), openFds(pid), threadCount(pid));
        if (r == 0) {
            rss0 = rssKb(pid);
            fds0 = openFds(pid);
            census0 = fdCensus(pid);
            threads0 = threadCount(pid);
        }
    }
    rss1 = rssKb(pid);
    int fds1 = openFds(pid), threads1 = threadCount(pid);

    std::map<Fault, std::map<int, int>> table;
    for (const auto& oc : tally.outcomes)
        ++table[oc.shot.fault][oc.status];
    for (const auto& [f, st] : table) {
        std::string line;
        for (auto [code, n] : st)
            line += " " + std::to_string(code) + "x" + std::to_string(n);
        std::printf("  %-24s%s\n", faultName(f), line.c_str());
    }
    auto only = [&](Fault f, std::set<int> ok) {
        for (auto [code, n] : table[f])
            if (!ok.count(code))
                return false;
        return true;
    };
    v.check(only(Fault::Status429, {429, 503}),
            "429 storms answer 429 (or 503 while every key cools down)");
    v.check(only(Fault::Status500, {502, 429, 503}), "upstream 500s answer 502");
    v.check(only(Fault::SlowTimeout, {504, 429, 503}),
            "a first byte later than first_byte_timeout_ms answers 504");
    v.check(table[Fault::Cut3][200] > 0 && table[Fault::Cut0][200] + table[Fault::Stall][200] > 0,
            "cut and stalled streams were exercised");
    audit(v, s, "u", start, tally.outcomes, false);

    // No stuck worker: a burst as wide as the load is answered at once.
    Tally burst;
    std::atomic<bool> never{false};
    double t0 = now();
    runLoad(
        64, 1, never,
        [&](int c, int) { return makeShot(key, c % 2, c % 4 < 2, Fault::None, kUsage); },
        [&] { return s.port(); }, burst);
    double burstSeconds = now() - t0;
    v.check(burst.byStatus()[200] == 64 && burstSeconds < 10,
            "after the faults 64 concurrent requests all served in " +
                std::to_string(burstSeconds) + " s");
    std::printf("  after round 1: RSS %lld kB, %d fds, %d threads; after round %d: RSS %lld kB, %d "
                "fds, %d threads\n",
                static_cast<long long>(rss0), fds0, threads0, rounds, static_cast<long long>(rss1),
                fds1, threads1);
    checkFds(v, census0, fdCensus(pid), 32);
    v.check(threads1 <= threads0 + 2, "thread count back to baseline (no stuck threads)");
    v.check(rss1 <= rss0 + std::max<std::int64_t>(8 * 1024, rss0 / 10),
            "memory back to baseline (growth " + std::to_string(rss1 - rss0) + " kB after " +
                std::to_string(rounds - 1) + " more rounds)");
    return v.finish();
}

} // namespace drills
