// Drill: many concurrent requests from one key whose balance covers only some of them.
#include <algorithm>
#include <latch>
#include <thread>

#include "drill.hpp"

using namespace trollproxy;

namespace drills {

namespace {

// One round: `n` requests at once, a balance that covers `covers` holds; the
// upstream reports `num/den` of the hold's tokens (1/1 exact, 1/2 under, 2/1 over; output
// at most max_tokens). With max_tokens set the hold bounds the charge.
bool round(Verdict& v, DrillStack& s, const Options& o, const std::string& user, int num, int den) {
    const int n = o.overspendRequests;
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
    std::printf(
        "\n  round %s: %d concurrent requests (stream/whole x OpenAI/Anthropic), hold %s each, "
        "actual cost %s each, balance %s = %d holds\n",
        user.c_str(), n, money(hold).c_str(), money(cost).c_str(), money(start).c_str(),
        o.overspendCovers);

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
            tally.add(fire(s.port(), shots[static_cast<std::size_t>(i)], 60));
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
    if (num == den) {
        v.check(served == o.overspendCovers, "exactly " + std::to_string(o.overspendCovers) +
                                                 " served when cost = hold (" +
                                                 std::to_string(served) + ")");
        v.check(b.creditsNew.nanos == 0 && shortfall.nanos == 0,
                "balance spent to exactly zero, no shortfall");
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
    return true;
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
    round(v, s, o, "exact", 1, 1);
    round(v, s, o, "under", 1, 2);
    round(v, s, o, "over", 2, 1);
    return v.finish();
}

} // namespace drills
