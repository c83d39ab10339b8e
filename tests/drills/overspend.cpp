// Drill: many concurrent requests from one key whose balance covers only some of them; with budget
// slices, spread over two proxies on one ledger.
#include <algorithm>
#include <latch>
#include <map>
#include <thread>

#include "drill.hpp"

using namespace trollproxy;

namespace drills {

namespace {

// How a round sends its requests.
struct Spread {
    int requests = 0;    ///< sent at once
    int proxies = 1;     ///< request i goes to instance i % proxies
    bool slices = false; ///< budget slices: the books are read once the slices went back
};

// One round: `n` requests at once, a balance that covers `covers` holds; the
// upstream reports `num/den` of the hold's tokens (1/1 exact, 1/2 under, 2/1 over; output
// at most max_tokens). With max_tokens set the hold bounds the charge. Returns the start balance.
Money round(Verdict& v, DrillStack& s, const Options& o, const std::string& user, int num, int den,
            const Spread& spread) {
    const int n = spread.requests;
    const int maxTokens = 100;
    const std::size_t bodyBytes = 400;
    // Hold = (bytes/2 + 1 + 1000 unseen) input tokens at the dearest input price + max_tokens
    // output.
    Usage holdUsage{static_cast<std::int64_t>(bodyBytes / 2 + 1 + 1000), 0, 0, maxTokens, false};
    Money hold = priceUsage(s.prices, holdUsage);
    // Output never exceeds max_tokens (the proxy charges no more); "over" is more input than the
    // estimate.
    Usage actual{holdUsage.uncachedInput * num / den, 0, 0,
                 std::min<std::int64_t>(holdUsage.output * num / den, maxTokens), false};
    Money cost = priceUsage(s.prices, actual);
    Money start{hold.nanos * o.overspendCovers};
    std::string key = s.userWithKey(user, start);
    Money shortfallBefore = *s.ledger->totalShortfall();
    s.resetStats();
    std::printf("\n  round %s: %d concurrent requests (stream/whole x OpenAI/Anthropic) over %d "
                "proxies, hold %s each, actual cost %s each, balance %s = %d holds\n",
                user.c_str(), n, spread.proxies, money(hold).c_str(), money(cost).c_str(),
                money(start).c_str(), o.overspendCovers);
    std::unique_ptr<BalanceWatch> watch;
    if (spread.slices)
        watch = std::make_unique<BalanceWatch>(s, user, start);

    std::vector<Shot> shots;
    for (int i = 0; i < n; ++i) {
        Shot sh =
            makeShot(key, i % 2 == 1, (i / 2) % 2 == 1, Fault::None, actual, maxTokens, bodyBytes);
        sh.headers["x-fake-latency-ms"] = "300"; // keep holds outstanding together
        shots.push_back(sh);
    }
    bool sizes = true;
    for (const auto& sh : shots)
        sizes &= sh.body.size() == bodyBytes;
    v.check(sizes, "every request body is " + std::to_string(bodyBytes) +
                       " bytes, so every hold is the same");

    Tally tally;
    std::latch go(n + 1);
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
        threads.emplace_back([&, i] {
            go.arrive_and_wait();
            tally.add(fire(s.port(i % spread.proxies), shots[static_cast<std::size_t>(i)], 60));
        });
    }
    double t0 = now();
    go.arrive_and_wait();
    for (auto& t : threads)
        t.join();
    double took = now() - t0;

    auto st = tally.byStatus();
    int served = st[200], refused = st[402];
    int incomplete = 0;
    for (const auto& oc : tally.outcomes)
        incomplete += oc.status == 200 && !oc.complete;
    std::printf("  answers in %.1f s: %d served (200), %d refused (402), %d other\n", took, served,
                refused, n - served - refused);
    int shown = 0;
    for (const auto& oc : tally.outcomes) {
        if (oc.status != 200 && oc.status != 402 && shown++ < 5)
            std::printf("  unexpected: status %d after %.1f s (%s, %s): %s\n", oc.status,
                        oc.seconds, oc.shot.anthropic ? "Anthropic" : "OpenAI",
                        oc.shot.stream ? "stream" : "whole", oc.body.substr(0, 200).c_str());
    }
    v.check(served + refused == n, "every request was either served or refused with 402");
    v.check(incomplete == 0,
            "every 200 carried a whole answer (" + std::to_string(incomplete) + " did not)");
    if (spread.slices) {
        // Charges settle in the background; unused slices go back after slice_idle_seconds.
        double took = 0;
        const bool released = waitReleased(s, user, start, 30, &took);
        v.check(released,
                "charges settled, journals empty and every slice back in the balance (after " +
                    std::to_string(took) + " s)");
        watch->finish(v);
    }

    Balance b = s.balance(user);
    int dup = 0;
    auto logs = s.logs(user, &dup);
    Money logged;
    int charged = 0;
    int refusalsLogged = 0; // the 402s are in the request log too, with no cost
    for (const auto& [id, e] : logs) {
        logged += e.cost;
        charged += e.success;
        refusalsLogged += !e.success && e.statusCode == 402 && e.cost.nanos == 0;
    }
    Money decrease = start - b.creditsNew;
    Money shortfall = *s.ledger->totalShortfall() - shortfallBefore;
    FakeStats fs = s.stats();
    Usage servedTokens{fs.input, fs.cacheWrite, fs.cacheRead, fs.output, false};
    Money upstreamValue = priceUsage(s.prices, servedTokens);
    std::printf("  ledger: creditsNew %s -> %s (decrease %s), creditsNewUsed %s, %zu log entries, "
                "logged costs %s, shortfall %s\n",
                money(start).c_str(), money(b.creditsNew).c_str(), money(decrease).c_str(),
                money(b.creditsNewUsed).c_str(), logs.size(), money(logged).c_str(),
                money(shortfall).c_str());
    std::printf("  upstream /_stats: %lld requests, %lld completed, tokens worth %s\n",
                static_cast<long long>(fs.requests), static_cast<long long>(fs.completed),
                money(upstreamValue).c_str());

    v.check(b.creditsNew.nanos >= 0 && b.credits.nanos >= 0 && b.refCredits.nanos >= 0,
            "no balance field below zero");
    v.check(b.heldCreditsNew.nanos == 0 && b.heldCredits.nanos == 0 && b.heldRefCredits.nanos == 0,
            "nothing held once the answers are in and the slices went back");
    v.check(logged == decrease, "sum of logged costs (" + money(logged) + ") = balance decrease (" +
                                    money(decrease) + ")");
    v.check(b.creditsNewUsed == decrease, "creditsNewUsed = balance decrease");
    v.check(dup == 0 && charged == served, "one charged log entry per served request (" +
                                               std::to_string(charged) + " for " +
                                               std::to_string(served) + ")");
    v.check(static_cast<int>(logs.size()) == served + refused && refusalsLogged == refused,
            "one uncharged log entry per 402 refusal (" + std::to_string(refusalsLogged) + " for " +
                std::to_string(refused) + ")");
    v.check(fs.completed == served && fs.requests == served,
            "the upstream saw exactly the served requests (" + std::to_string(fs.requests) + ")");
    if (num <= den)
        v.check(upstreamValue == logged + shortfall,
                "upstream tokens priced (" + money(upstreamValue) + ") = logged costs + shortfall");
    v.check(decrease <= start, "served requests never took more than the balance had");
    if (num == den && spread.slices) {
        // Money a slice holds (less than one hold's worth) may be out of the other proxy's reach.
        v.check(served > 0 && served <= o.overspendCovers,
                "at most the " + std::to_string(o.overspendCovers) +
                    " covered served when cost = hold (" + std::to_string(served) + ")");
        v.check(b.creditsNew == start - Money{cost.nanos * served} && shortfall.nanos == 0,
                "balance = start - served x cost exactly, no shortfall");
    } else if (num == den) {
        v.check(served == o.overspendCovers, "exactly " + std::to_string(o.overspendCovers) +
                                                 " served when cost = hold (" +
                                                 std::to_string(served) + ")");
        v.check(b.creditsNew.nanos == 0 && shortfall.nanos == 0,
                "balance spent to exactly zero, no shortfall");
    } else if (num < den && spread.slices) {
        v.check(served > 0 && Money{cost.nanos * served} <= start,
                "served x actual cost <= balance (" + std::to_string(served) + " served)");
        v.check(shortfall.nanos == 0 && logged == Money{cost.nanos * served},
                "each charged exactly its cost, no shortfall");
    } else if (num < den) {
        v.check(served >= o.overspendCovers && Money{cost.nanos * served} <= start,
                "served x actual cost <= balance, and at least the " +
                    std::to_string(o.overspendCovers) + " holds the balance covers were served");
        v.check(shortfall.nanos == 0 && logged == Money{cost.nanos * served},
                "each charged exactly its cost, no shortfall");
    } else {
        v.check(served <= o.overspendCovers,
                "no more served than holds fit (" + std::to_string(served) + ")");
        v.check(shortfall.nanos == 0 && logged == Money{hold.nanos * served},
                "upstream over-ran its hold: each request charged its hold (the client's limit), "
                "no shortfall");
    }
    return start;
}

} // namespace

int overspendDrill(const Options& o) {
    Verdict v("overspend race: " + std::to_string(o.overspendRequests) +
              " concurrent requests, one key, balance covers " + std::to_string(o.overspendCovers));
    // No cache prices: the hold prices every input byte/2 at the dearest input
    // price, so with one input price a request can cost exactly its hold.
    DrillStack s(
        R"("rate_limit_per_minute": 0, "worker_threads": 640)", "", {"--threads", "640"},
        R"("billing_multiplier": 1.1, "input_price_per_mtok": 3, "output_price_per_mtok": 15)");
    const Spread one{o.overspendRequests, 1, false};
    round(v, s, o, "exact", 1, 1, one);
    round(v, s, o, "under", 1, 2, one);
    round(v, s, o, "over", 2, 1, one);
    return v.finish();
}

int slicesOverspendDrill(const Options& o) {
    const int n = 4 * o.overspendCovers;
    Verdict v("overspend race with budget slices: two proxies on one ledger, " + std::to_string(n) +
              " concurrent requests, balance covers " + std::to_string(o.overspendCovers));
    for (const auto& target : ledgerTargets(o)) {
        std::printf("\n  ledger: %s\n", target.name.c_str());
        // A slice holds at most ~3.5 holds (0.02 USD), so slices are refilled, and the
        // balance runs too low for one: the last requests fall back to exact holds.
        DrillStack s(
            R"("rate_limit_per_minute": 0, "worker_threads": 640, )" + sliceSettings("0.02"),
            target.uri, {"--threads", "640"},
            R"("billing_multiplier": 1.1, "input_price_per_mtok": 3, "output_price_per_mtok": 15)");
        s.startProxy(1);
        const Spread two{n, 2, true};
        std::map<std::string, Money> starts;
        starts["slices-exact"] = round(v, s, o, "slices-exact", 1, 1, two);
        starts["slices-under"] = round(v, s, o, "slices-under", 1, 2, two);
        starts["slices-over"] = round(v, s, o, "slices-over", 2, 1, two);
        std::printf("  slice refills granted %.0f / %.0f, fallbacks to exact holds %.0f / %.0f "
                    "(proxy 0 / 1)\n",
                    s.metric(R"(trollproxy_slice_refills_total{result="granted"})", 0),
                    s.metric(R"(trollproxy_slice_refills_total{result="granted"})", 1),
                    s.metric("trollproxy_slice_fallbacks_total", 0),
                    s.metric("trollproxy_slice_fallbacks_total", 1));
        // Both stop; what they held went back before, so nothing may change now.
        s.peers[0]->stop();
        s.proxy->stop();
        for (const auto& [user, start] : starts) {
            int dup = 0;
            Money logged;
            for (const auto& [id, e] : s.logs(user, &dup))
                logged += e.cost;
            Balance b = s.balance(user);
            v.check(dup == 0 && b.heldCreditsNew.nanos == 0 && logged == start - b.creditsNew &&
                        logged == b.creditsNewUsed,
                    "after both proxies stopped, " + user +
                        ": nothing held, logged costs = balance decrease = creditsNewUsed = " +
                        money(logged));
        }
    }
    return v.finish();
}

} // namespace drills
