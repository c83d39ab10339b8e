// Drill: the ledger goes away under load (SQLite write-locked by another process, or the MongoDB
// server frozen), in fail_closed and fail_open, and with budget slices that cover the load; then
// every served request must be billed.
#include <algorithm>
#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>

#include "../support/process.hpp"
#include "drill.hpp"

using namespace trollproxy;

namespace drills {

namespace {

const Usage kUsage{800, 0, 200, 64, false};

Shot outageShot(const std::string& key, int c, int n) {
    bool stream = (c + n) % 2 == 0;
    Shot s = makeShot(key, (c / 2 + n) % 2 == 0, stream, Fault::None, kUsage);
    s.headers[stream ? "x-fake-chunk-delay-ms" : "x-fake-latency-ms"] = stream ? "10" : "80";
    return s;
}

struct Backend {
    std::string name;
    std::string uri;                       // "" = SQLite in the stack's directory
    std::function<void(DrillStack&)> stop; // starts the outage
    std::function<void()> resume;          // ends it
};

// When money stays held after recovery: which requests still hold it (renewHold
// answers NotFound for a request that holds nothing). The ids come from the
// proxy's request log: a refusal's answer carries none.
void describeHeld(DrillStack& s, const std::string& user, double outageFrom) {
    Balance b = s.balance(user);
    std::printf("  still held after recovery: %s\n", money(b.heldCreditsNew).c_str());
    auto ledger = openLedger(s.ledgerUri);
    if (!ledger)
        return;
    const std::int64_t expiry = std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count() +
                                s.settings.holdTtlSeconds * 1000;
    std::istringstream log(support::readFile(s.dir + "/proxy.log"));
    const std::string idKey = "\"request_id\":\"";
    int shown = 0;
    for (std::string line; std::getline(log, line);) {
        const auto p = line.find(idKey);
        if (p == std::string::npos)
            continue;
        const std::string id =
            line.substr(p + idKey.size(), line.find('"', p + idKey.size()) - p - idKey.size());
        if ((*ledger)->renewHold(id, expiry) && shown++ < 5)
            std::printf("  held by %s (the outage began %.3f s before now): %s\n", id.c_str(),
                        now() - outageFrom, line.c_str());
    }
    if (shown == 0)
        std::printf("  no request in the proxy's log holds it\n");
}

// `slices`: budget slices (journal_first, fail_closed) warmed before the outage must
// carry the load through it without a refusal.
void mode(Verdict& v, const Options& o, Backend& be, bool failOpen, const std::string& user,
          bool slices = false) {
    const char* modeName = failOpen ? "fail_open" : "fail_closed";
    std::printf("\n  %s, %s%s: %.0f s outage under load\n", be.name.c_str(), modeName,
                slices ? ", budget slices" : "", o.outageSeconds);
    // Slices of up to 40 USD; the load draws about 0.2 USD a second.
    DrillStack s(std::string(R"("rate_limit_per_minute": 0, "ledger_failure_mode": ")") + modeName +
                     "\"" + (slices ? ", " + sliceSettings("40") : ""),
                 be.uri);
    Money start = *Money::parse("100");
    std::string key = s.userWithKey(user, start);
    std::unique_ptr<BalanceWatch> watch;
    if (slices)
        watch = std::make_unique<BalanceWatch>(s, user, start);
    std::atomic<bool> stop{false};
    Tally tally;
    const int clients = 12;
    int port = s.port();
    std::thread load([&] {
        runLoad(
            clients, 0, stop, [&](int c, int n) { return outageShot(key, c, n); },
            [port] { return port; }, tally);
    });
    std::this_thread::sleep_for(std::chrono::seconds(2));
    Money heldAtOutage;
    if (slices) {
        // A slice is sized to the spend (about 10 s of what was drawn since its last refill,
        // at least four times the request that refills it), so the steady load keeps it near
        // the outage's length. Warm it: one request that may cost up to ~16.5 USD (max_tokens
        // 1,000,000) is more than the slice has, so its refill grows the slice to the most
        // slice_max_usd (40) and half the free balance allow.
        Outcome warm = fire(
            port, makeShot(key, false, false, Fault::None, Usage{100, 0, 0, 10, false}, 1'000'000));
        const int warmStatus = warm.status;
        heldAtOutage = s.balance(user).heldCreditsNew;
        std::printf("  warmed the slice with a request of max_tokens 1000000: %d; %s held\n",
                    warmStatus, money(heldAtOutage).c_str());
        tally.add(std::move(warm));
        v.check(warmStatus == 200, "the request that warms the slice was served");
    }
    double outageFrom = now();
    be.stop(s);
    // A ledger operation during the outage returns within its time bound.
    LedgerOptions lo;
    lo.timeoutMs = 1000;
    double t0 = now();
    auto probe = openLedger(s.ledgerUri, lo);
    ReserveStatus rs = probe ? (*probe)->reserve(HoldRequest{"probe-1", s.ledgerName(user),
                                                             Pool::CreditsNew, Money{1}, 0})
                             : ReserveStatus::LedgerUnavailable;
    double probeSeconds = now() - t0;
    v.check(rs == ReserveStatus::LedgerUnavailable && probeSeconds < 2.5,
            "during the outage opening the ledger and a reserve (timeout 1 s) answer "
            "LedgerUnavailable in " +
                std::to_string(probeSeconds) + " s");
    double left = o.outageSeconds - (now() - outageFrom);
    if (left > 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(left * 1000)));
    const double queued = s.metric("trollproxy_settlement_queue_depth");
    be.resume();
    double outageTo = now();
    std::this_thread::sleep_for(std::chrono::seconds(3));
    stop = true;
    load.join();

    // Recovery: the journal drains and no hold is left (the slice goes back when idle).
    bool recovered = waitReleased(s, user, start, 40);
    double recoveredAfter = now() - outageTo;
    if (!recovered)
        describeHeld(s, user, outageFrom);
    auto st = tally.byStatus();
    int during = 0, during503 = 0, during200 = 0;
    double maxSeconds = 0;
    std::vector<double> lat;
    for (const auto& oc : tally.outcomes) {
        maxSeconds = std::max(maxSeconds, oc.seconds);
        lat.push_back(oc.seconds);
        if (oc.started + oc.seconds >= outageFrom && oc.started <= outageTo) {
            ++during;
            during503 += oc.status == 503;
            during200 += oc.status == 200;
        }
    }
    std::sort(lat.begin(), lat.end());
    std::string statuses;
    for (auto [code, n] : st)
        statuses += " " + std::to_string(code) + "x" + std::to_string(n);
    std::printf("  %zu requests:%s; %d overlapped the outage (%d served, %d got 503); latency p50 "
                "%.2f s, max %.2f s\n",
                tally.outcomes.size(), statuses.c_str(), during, during200, during503,
                lat.empty() ? 0 : lat[lat.size() / 2], maxSeconds);
    double journalled = s.metric("trollproxy_journalled_charges_total");
    double replayed = s.metric("trollproxy_journal_replayed_total");
    std::printf("  journalled %.0f charges, replayed %.0f; %.0f in the settlement queue at the "
                "outage's end; recovered %.1f s after the ledger came back\n",
                journalled, replayed, queued, recoveredAfter);
    if (watch)
        watch->finish(v);
    v.check(recovered, "after recovery the journal is empty and no hold is left");
    v.check(st[200] + st[503] == static_cast<int>(tally.outcomes.size()),
            "every answer was 200 or 503");
    v.check(maxSeconds < 15,
            "no request waited unboundedly (max " + std::to_string(maxSeconds) + " s)");
    if (slices) {
        // What the requests served while the ledger was out cost: the slice must have held that.
        Money drawn;
        for (const auto& oc : tally.outcomes) {
            if (oc.status == 200 && oc.started + oc.seconds >= outageFrom && oc.started <= outageTo)
                drawn += priceUsage(s.prices, oc.shot.usage);
        }
        v.check(heldAtOutage >= drawn, "the warm slice (" + money(heldAtOutage) +
                                           ") covered what the requests overlapping the outage "
                                           "cost (" +
                                           money(drawn) + ")");
        std::printf(
            "  during the outage the ledger failed %.0f authentications, %.0f slice refills; "
            "slice refills granted %.0f in all\n",
            s.metric(R"(trollproxy_ledger_errors_total{op="authenticate"})"),
            s.metric(R"(trollproxy_slice_refills_total{result="unavailable"})"),
            s.metric(R"(trollproxy_slice_refills_total{result="granted"})"));
        v.check(st[503] == 0 && st[200] == static_cast<int>(tally.outcomes.size()),
                "slices: no request refused, during the outage either (" +
                    std::to_string(during200) + " served while it lasted)");
        v.check(queued > 0, "slices: charges waited in the journal during the outage");
    } else if (failOpen) {
        v.check(st[503] == 0, "fail_open: no request refused");
        v.check(journalled > 0, "fail_open: charges went through the journal");
    } else {
        v.check(during503 > 0, "fail_closed: new requests got 503 during the outage");
    }
    Audit a = audit(v, s, user, start, tally.outcomes, false);
    FakeStats fs = s.stats();
    Money upstreamValue =
        priceUsage(s.prices, Usage{fs.input, fs.cacheWrite, fs.cacheRead, fs.output, false});
    std::printf("  upstream: %lld requests, %lld whole answers worth %s\n",
                static_cast<long long>(fs.requests), static_cast<long long>(fs.completed),
                money(upstreamValue).c_str());
    v.check(fs.requests == st[200] && fs.completed == a.fullEntries &&
                upstreamValue == a.fullCharges,
            "no unbilled service: what reached the upstream = the 200s = the ledger's charges");
}

// The outage backends: SQLite write-locked by another process; with --mongo, the
// MongoDB-protocol server frozen (SIGSTOP), its connections hanging as a dead primary's do.
std::vector<Backend> backends(const Options& o, std::unique_ptr<harness::Process>& locker,
                              const std::string& dbPrefix) {
    std::vector<Backend> out;
    out.push_back({"SQLite (write lock held by another process)", "",
                   [&o, &locker](DrillStack& s) {
                       locker = lockSqlite(o, s.dir + "/ledger.db", o.outageSeconds + 60);
                   },
                   [&locker] { locker.reset(); }});
    if (!o.mongoUri.empty()) {
        static int db = 0;
        pid_t mongoPid = o.mongoPid;
        out.push_back({"MongoDB protocol (CongoDB frozen with SIGSTOP)",
                       o.mongoUri + "/" + dbPrefix + std::to_string(++db),
                       [mongoPid](DrillStack&) { ::kill(mongoPid, SIGSTOP); },
                       [mongoPid] { ::kill(mongoPid, SIGCONT); }});
    }
    return out;
}

} // namespace

int outageDrill(const Options& o) {
    Verdict v("ledger outage under load (" + std::to_string(static_cast<int>(o.outageSeconds)) +
              " s)");
    std::unique_ptr<harness::Process> locker;
    Backend sqlite{
        "SQLite (write lock held by another process)", "",
        [&](DrillStack& s) { locker = lockSqlite(o, s.dir + "/ledger.db", o.outageSeconds + 60); },
        [&] { locker.reset(); }};
    mode(v, o, sqlite, false, "closed");
    mode(v, o, sqlite, true, "open");
    if (!o.mongoUri.empty()) {
        // The MongoDB-protocol server is frozen (SIGSTOP): connections hang, as a dead primary's
        // do.
        pid_t mongoPid = o.mongoPid;
        std::string uri = o.mongoUri;
        static int db = 0;
        Backend mongo{"MongoDB protocol (CongoDB frozen with SIGSTOP)", "",
                      [&](DrillStack&) { ::kill(mongoPid, SIGSTOP); },
                      [&] { ::kill(mongoPid, SIGCONT); }};
        mongo.uri = uri + "/drill" + std::to_string(++db);
        mode(v, o, mongo, false, "mongo-closed");
        mongo.uri = uri + "/drill" + std::to_string(++db);
        mode(v, o, mongo, true, "mongo-open");
    }
    return v.finish();
}

int slicesOutageDrill(const Options& o) {
    Verdict v("ledger outage with budget slices (" +
              std::to_string(static_cast<int>(o.outageSeconds)) + " s, fail_closed)");
    std::unique_ptr<harness::Process> locker;
    for (auto& be : backends(o, locker, "slices-outage"))
        mode(v, o, be, false, be.uri.empty() ? "slices" : "mongo-slices", true);
    return v.finish();
}

} // namespace drills
