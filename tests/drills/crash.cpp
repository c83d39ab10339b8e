// Drill: kill -9 the proxy under load, mid-stream (also while charges sit in the journal); restart;
// audit. With budget slices: one of two proxies on one ledger.
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

// The ledger against the upstream's own count: every full charge was served,
// and what was served but not billed is at most the requests in flight at the kill.
void checkUpstream(Verdict& v, DrillStack& s, const Audit& a, int inFlight) {
    FakeStats fs = s.stats();
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
    v.check(unbilled >= 0 && unbilled <= inFlight,
            "the ledger never bills more than the upstream served; the unbilled ones are at most "
            "the requests in "
            "flight at the kill (" +
                std::to_string(inFlight) + ")");
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
    Audit a = audit(v, s, "u", start, tally.outcomes, true);
    checkUpstream(v, s, a, clients);
    (void)atKill;
}

// Budget slices: two proxies on one ledger; one is killed under load while the
// other goes on serving, then restarted on its journal (the same instance).
// `stalled`: the ledger stops answering (SQLite write-locked, CongoDB frozen)
// before the kill, so the dead proxy leaves charges on its slice in its journal.
void slicesPhase(Verdict& v, const Options& o, const LedgerTarget& target, bool stalled) {
    std::printf(
        "\n  %s: two proxies with budget slices (journal_first), kill -9 one under load%s\n",
        target.name.c_str(),
        stalled ? " while the ledger does not answer (charges wait in the journal)" : "");
    DrillStack s(R"("rate_limit_per_minute": 0, )" + sliceSettings("5"), target.uri);
    s.startProxy(1);
    Money start = *Money::parse("100");
    std::string key = s.userWithKey("u", start);
    BalanceWatch watch(s, "u", start);
    std::atomic<int> port0{s.port(0)}, port1{s.port(1)};
    std::atomic<bool> peerUp{true}, stop{false};
    // Odd clients use proxy 1 while it is up, proxy 0 meanwhile.
    auto portOf = [&](int c) { return c % 2 == 1 && peerUp ? port1.load() : port0.load(); };
    auto next = [&](int c, int n) { return crashShot(key, c, n); };
    Tally tally;
    const int clients = o.quick ? 12 : 24;
    std::thread load([&] { runLoad(clients, 0, stop, next, portOf, tally); });
    std::this_thread::sleep_for(std::chrono::seconds(o.quick ? 4 : 8));
    std::unique_ptr<harness::Process> lock;
    if (stalled) {
        if (target.mongo)
            ::kill(o.mongoPid, SIGSTOP);
        else
            lock = lockSqlite(o, s.dir + "/ledger.db", 120);
        const double until = now() + 20;
        std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        while (now() < until && journalLines(s.journalPath(1)) == 0)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::int64_t beforeKill = 0;
    {
        std::lock_guard l(tally.mutex);
        beforeKill = static_cast<std::int64_t>(tally.outcomes.size());
    }
    peerUp = false; // new requests go to proxy 0; those in flight on proxy 1 die with it
    s.peers[0]->signal(SIGKILL, true);
    const int journalled = journalLines(s.journalPath(1));
    if (stalled) {
        v.check(journalled > 0, "charges were waiting in the dead proxy's journal");
        if (target.mongo)
            ::kill(o.mongoPid, SIGCONT);
        lock.reset(); // the ledger answers again
    }
    std::this_thread::sleep_for(std::chrono::seconds(2)); // the survivor serves everyone
    stop = true;
    load.join();
    int cut = 0, dropped = 0;
    for (const auto& oc : tally.outcomes) {
        cut += oc.status == 200 && !oc.complete;
        dropped += oc.status == 0;
    }
    std::printf("  killed proxy 1 after %lld answers (%d lines in its journal): %d answers cut "
                "mid-way, %d requests got no answer\n",
                static_cast<long long>(beforeKill), journalled, cut, dropped);

    // The survivor settles and gives its slices back when idle; the dead one's stay
    // held (hold_ttl_seconds is 900: no sweep) until it restarts.
    double until = now() + 30;
    while (now() < until && (s.metric("trollproxy_slices_outstanding", 0) > 0 ||
                             s.metric("trollproxy_journal_pending", 0) > 0))
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    Money deadHeld = s.balance("u").heldCreditsNew;
    v.check(s.metric("trollproxy_slices_outstanding", 0) == 0 && deadHeld.nanos > 0,
            "the survivor gave its slices back; the dead proxy's slice still holds " +
                money(deadHeld));

    const double restartAt = now();
    s.startProxy(1);
    port1 = s.port(1);
    Money heldAfter = s.balance("u").heldCreditsNew;
    while (heldAfter.nanos != 0 && now() - restartAt < 5) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        heldAfter = s.balance("u").heldCreditsNew;
    }
    const double releasedAtStart = s.metric("trollproxy_holds_released_at_start_total", 1);
    v.check(heldAfter.nanos == 0 && releasedAtStart >= 1,
            "restarted on its journal, proxy 1 gave back the " +
                std::to_string(static_cast<int>(releasedAtStart)) +
                " hold(s) its previous life left (held 0 after " +
                std::to_string(now() - restartAt) + " s)");

    // Both serve again; then everything settles and the slices go back when idle.
    peerUp = true;
    std::atomic<bool> never{false};
    runLoad(
        clients, o.quick ? 5 : 10, never, [&](int c, int n) { return crashShot(key, c, n + 1000); },
        portOf, tally);
    double took = 0;
    const bool released = waitReleased(s, "u", start, 40, &took);
    v.check(released, "journals settled, every slice back in the balance " + std::to_string(took) +
                          " s after the load");
    watch.finish(v);
    Audit a = audit(v, s, "u", start, tally.outcomes, true);
    checkUpstream(v, s, a, clients / 2);
}

} // namespace

int crashDrill(const Options& o) {
    Verdict v("crash: kill -9 the proxy under load, restart, replay");
    phase(v, o, false);
    phase(v, o, true);
    return v.finish();
}

int slicesCrashDrill(const Options& o) {
    Verdict v("crash with budget slices: kill -9 one of two proxies under load, restart, replay");
    for (bool stalled : {false, true}) {
        for (const auto& target : ledgerTargets(o)) // a fresh MongoDB database each time
            slicesPhase(v, o, target, stalled);
    }
    return v.finish();
}

} // namespace drills
