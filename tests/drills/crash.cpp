// Drill: kill -9 the proxy under load, mid-stream (also while charges sit in the journal); restart;
// audit.
#include <algorithm>
#include <csignal>
#include <fstream>
#include <thread>

#include "drill.hpp"

using namespace trollproxy;

namespace drills {

namespace {

const Usage kUsage{1200, 40, 300, 96, false};

int journalLines(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    int n = 0;
    while (std::getline(in, line))
        n += !line.empty();
    return n;
}

Shot crashShot(const std::string& key, int c, int n) {
    bool stream = (c + n) % 3 != 0;
    Shot s = makeShot(key, (c + n) % 2 == 0, stream, Fault::None, kUsage);
    if (stream)
        s.headers["x-fake-chunk-delay-ms"] = "40"; // ~0.3 s streams: a kill lands mid-stream
    else
        s.headers["x-fake-latency-ms"] = "150";
    return s;
}

// Waits until no hold is left (the sweep returned the dead process's holds).
bool waitSettled(DrillStack& s, const std::string& user, Money start, double seconds) {
    double until = now() + seconds;
    while (now() < until) {
        Money logged;
        for (const auto& [id, e] : s.logs(user))
            logged += e.cost;
        if (start - s.balance(user).creditsNew == logged && !std::ifstream(s.journalPath()).good())
            return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    return false;
}

void phase(Verdict& v, const Options& o, bool duringOutage) {
    std::printf("\n  phase: kill -9 under load%s\n",
                duringOutage
                    ? " while the SQLite ledger is locked (fail_open: charges go to the journal)"
                    : "");
    DrillStack s(std::string(R"("rate_limit_per_minute": 0, "hold_ttl_seconds": 2)") +
                 (duringOutage ? R"(, "ledger_failure_mode": "fail_open")" : ""));
    Money start = *Money::parse("100");
    std::string key = s.userWithKey("u", start);
    std::atomic<int> port{s.port()};
    std::atomic<bool> stop{false};
    Tally tally;
    const int clients = o.quick ? 12 : 24;
    std::thread load([&] {
        runLoad(
            clients, 0, stop, [&](int c, int n) { return crashShot(key, c, n); },
            [&] { return port.load(); }, tally);
    });
    std::this_thread::sleep_for(std::chrono::seconds(2));
    std::unique_ptr<harness::Process> lock;
    int journalled = 0;
    if (duringOutage) {
        lock = lockSqlite(o, s.dir + "/ledger.db", 120);
        double until = now() + 25;
        while (now() < until && (journalled = journalLines(s.journalPath())) < clients)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        v.note(std::to_string(journalled) + " charges in the journal at the kill");
    } else {
        std::this_thread::sleep_for(std::chrono::seconds(o.quick ? 2 : 6));
    }
    std::int64_t beforeKill = 0;
    {
        std::lock_guard l(tally.mutex);
        beforeKill = static_cast<std::int64_t>(tally.outcomes.size());
    }
    s.proxy->signal(SIGKILL, true);
    stop = true;
    load.join();
    FakeStats atKill = s.stats();
    int cut = 0, dropped = 0;
    for (const auto& oc : tally.outcomes) {
        cut += oc.status == 200 && !oc.complete;
        dropped += oc.status == 0;
    }
    std::printf("  killed the proxy after %lld answers: %d answers cut mid-way, %d requests got no "
                "answer\n",
                static_cast<long long>(beforeKill), cut, dropped);
    if (duringOutage) {
        v.check(journalled > 0, "charges were waiting in the journal when the proxy died");
        lock.reset(); // the ledger is back
    }
    s.startProxy();
    port = s.port();
    // Traffic after the restart is billed too.
    std::atomic<bool> never{false};
    runLoad(
        4, 5, never, [&](int c, int n) { return crashShot(key, c, n + 1000); },
        [&] { return port.load(); }, tally);
    bool settled = waitSettled(s, "u", start, 40);
    v.check(
        settled,
        "after the restart the journal was replayed and the dead process's holds were returned");
    FakeStats fs = s.stats();
    Audit a = audit(v, s, "u", start, tally.outcomes, true);
    Money upstreamValue =
        priceUsage(s.prices, Usage{fs.input, fs.cacheWrite, fs.cacheRead, fs.output, false});
    Usage openai = kUsage;
    openai.cacheWrite = 0; // OpenAI's usage carries no cache writes
    Money dearest = std::max(priceUsage(s.prices, kUsage), priceUsage(s.prices, openai));
    std::int64_t unbilled = fs.completed - a.fullEntries;
    std::printf("  upstream served %lld whole answers (%s), ledger has %lld full charges (%s); "
                "%lld answers the "
                "upstream finished while the proxy died were not billed\n",
                static_cast<long long>(fs.completed), money(upstreamValue).c_str(),
                static_cast<long long>(a.fullEntries), money(a.fullCharges).c_str(),
                static_cast<long long>(unbilled));
    v.check(a.fullCharges <= upstreamValue &&
                upstreamValue - a.fullCharges <= Money{dearest.nanos * unbilled},
            "the ledger's charges = the upstream's served tokens, less the unbilled answers");
    v.check(unbilled >= 0 && unbilled <= clients,
            "the ledger never bills more than the upstream served; the unbilled ones are at most "
            "the requests in "
            "flight at the kill (" +
                std::to_string(clients) + ")");
    (void)atKill;
}

} // namespace

int crashDrill(const Options& o) {
    Verdict v("crash: kill -9 the proxy under load, restart, replay");
    phase(v, o, false);
    phase(v, o, true);
    return v.finish();
}

} // namespace drills
