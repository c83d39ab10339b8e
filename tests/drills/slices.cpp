// Drill: budget slices and the keys' owners: a revoked key is refused within auth_cache_ms while
// its slice still holds money; a top-up is usable at once by a user whose slice and balance ran
// out.
#include <algorithm>
#include <thread>

#include "drill.hpp"

using namespace trollproxy;

namespace drills {

namespace {

// One input price, so a request can cost exactly its hold (as in the overspend race).
const char* kPrices =
    R"("billing_multiplier": 1.1, "input_price_per_mtok": 3, "output_price_per_mtok": 15)";
const int kMaxTokens = 100;
const std::size_t kBodyBytes = 400;

// The hold of a kBodyBytes request: bytes/2 + 1 + 1000 unseen input tokens, max_tokens output.
Usage holdUsage() {
    return Usage{static_cast<std::int64_t>(kBodyBytes / 2 + 1 + 1000), 0, 0, kMaxTokens, false};
}

Shot exactShot(const std::string& key, int n) {
    Shot sh = makeShot(key, n % 2 == 1, (n / 2) % 2 == 1, Fault::None, holdUsage(), kMaxTokens,
                       kBodyBytes);
    sh.headers["x-fake-latency-ms"] = "20";
    return sh;
}

bool refusedKey(int status) {
    return status == 401 || status == 403;
}

void revoke(Verdict& v, DrillStack& s) {
    const std::string user = "revoked";
    const Money start = *Money::parse("10");
    const std::string key = s.userWithKey(user, start);
    const double bound = static_cast<double>(s.settings.authCacheMs) / 1000;
    std::printf("\n  revoke: a key with a warm slice is revoked under load (auth_cache_ms %lld)\n",
                static_cast<long long>(s.settings.authCacheMs));
    BalanceWatch watch(s, user, start);
    Tally tally;
    std::atomic<bool> stop{false};
    std::thread load([&] {
        runLoad(
            4, 0, stop, [&](int c, int n) { return exactShot(key, c * 100000 + n); },
            [&] { return s.port(); }, tally);
    });
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const Money heldAtRevoke = s.balance(user).heldCreditsNew;
    const double revoking = now();
    auto revoked = s.ledger->revokeKey(key);
    const double revokedAt = now(); // committed
    // At the bound every request is refused; the slice (idle for 5 s) still holds money.
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(bound * 1000) + 100));
    const Money heldAfter = s.balance(user).heldCreditsNew;
    std::this_thread::sleep_for(std::chrono::milliseconds(1400));
    stop = true;
    load.join();

    int servedBefore = 0, servedAfter = 0, refusedBefore = 0, refusedAfter = 0, late = 0, other = 0;
    double lastServed = -1e9, firstRefused = 1e9;
    for (const auto& oc : tally.outcomes) {
        const double at = oc.started - revokedAt; // when it was sent, from the revoke
        const bool before = oc.started < revoking;
        if (oc.status == 200) {
            (before ? servedBefore : servedAfter) += 1;
            lastServed = std::max(lastServed, at);
            // Sent after the bound (+ 0.1 s for the ledger call that cached the key) and served.
            late += at > bound + 0.1;
        } else if (refusedKey(oc.status)) {
            (before ? refusedBefore : refusedAfter) += 1;
            firstRefused = std::min(firstRefused, at);
        } else {
            ++other;
        }
    }
    std::printf("  revokeKey took %.3f s; sent before it: %d served, %d refused; after: %d "
                "served (the last sent %.3f s after it returned), %d refused (the first sent "
                "%.3f s after), %d other answers\n",
                revokedAt - revoking, servedBefore, refusedBefore, servedAfter, lastServed,
                refusedAfter, firstRefused, other);
    v.check(static_cast<bool>(revoked), "trollproxy-admin's revokeKey succeeded");
    v.check(heldAtRevoke.nanos > 0 && heldAfter.nanos > 0,
            "the key's slice held money at the revoke (" + money(heldAtRevoke) +
                ") and still at the bound, when every request is refused (" + money(heldAfter) +
                ")");
    v.check(servedBefore > 0 && refusedBefore == 0 && other == 0,
            "before the revoke every request was served");
    v.check(refusedAfter > 0 && late == 0 && firstRefused <= bound + 0.1,
            "refused within the bound: nothing sent later than " + std::to_string(bound) +
                " s (+0.1) after the revoke was served (" + std::to_string(late) + " were)");

    double took = 0;
    const bool released = waitReleased(s, user, start, 30, &took);
    v.check(released, "the idle slice went back to the balance " + std::to_string(took) +
                          " s later; every charge settled");
    watch.finish(v);
    Audit a = audit(v, s, user, start, tally.outcomes, false);
    int refusedCharged = 0;
    auto logs = s.logs(user);
    for (const auto& oc : tally.outcomes) {
        auto it = logs.find(oc.requestId);
        refusedCharged += oc.status != 200 && it != logs.end() && it->second.cost.nanos != 0;
    }
    v.check(refusedCharged == 0 && a.served == servedBefore + servedAfter,
            "the refused requests cost nothing; every served one is charged once");
}

// Spends the balance with exact requests, one at a time, until one is refused
// (402); returns how many were served. `n` numbers the requests.
int spendDown(DrillStack& s, const std::string& key, int& n, Tally& tally, int& refusal) {
    int served = 0;
    refusal = 0;
    for (int i = 0; i < 500 && refusal == 0; ++i) {
        Outcome oc = fire(s.port(), exactShot(key, n++));
        if (oc.status == 200 && oc.complete)
            ++served;
        else
            refusal = oc.status;
        tally.add(std::move(oc));
    }
    return served;
}

void topUp(Verdict& v, DrillStack& s) {
    const std::string user = "topup";
    const Money hold = priceUsage(s.prices, holdUsage());
    Money credited{hold.nanos * 3};
    const std::string key = s.userWithKey(user, credited);
    std::printf("\n  top-up: hold = cost = %s; the user starts with 3 holds\n",
                money(hold).c_str());
    BalanceWatch watch(s, user, credited);
    Tally tally;
    int n = 0, served = 0;
    // One hold's worth: too little for a slice (it takes half the free balance), so the next
    // request holds exactly; then 40 holds' worth, which a slice refill takes from.
    for (std::int64_t holds : {1, 40, 1, 40}) {
        int refusal = 0;
        const int spent = spendDown(s, key, n, tally, refusal);
        served += spent;
        // Each served request cost exactly one hold: what was left when it was refused.
        const Money left = credited - Money{hold.nanos * served};
        if (refusal == 402 && left >= hold)
            v.note("refused (402) with " + money(left) +
                   " (>= one hold) not yet spent: the rest of the user's slice was out of reach");
        Balance b = s.balance(user);
        const Money amount{hold.nanos * holds};
        credited += amount;
        watch.credited(credited); // raised before the money exists
        auto ok = s.ledger->credit(s.ledgerName(user), BalanceField::CreditsNew, amount);
        const double creditedAt = now();
        Outcome next = fire(s.port(), exactShot(key, n++));
        const double after = next.started - creditedAt;
        const bool nextServed = next.status == 200 && next.complete;
        served += nextServed;
        tally.add(next);
        std::printf("  %d served, then %d (free %s, held %s); credited %s; the next request, sent "
                    "%.3f s later: %d\n",
                    spent, refusal, money(b.creditsNew).c_str(), money(b.heldCreditsNew).c_str(),
                    money(amount).c_str(), after, next.status);
        v.check(refusal == 402 && static_cast<bool>(ok),
                "the user ran out (402) and the admin credited " + money(amount));
        v.check(nextServed,
                "the first request after a top-up of " + money(amount) + " was served at once");
    }
    double took = 0;
    const bool released = waitReleased(s, user, credited, 30, &took);
    v.check(released, "the idle slice went back to the balance " + std::to_string(took) +
                          " s later; every charge settled");
    watch.finish(v);
    Audit a = audit(v, s, user, credited, tally.outcomes, false);
    v.check(a.logged == Money{hold.nanos * served} && a.served == served &&
                Money{hold.nanos * served} <= credited,
            "served x cost = logged costs = balance decrease (" + money(a.logged) + " for " +
                std::to_string(served) + " served) <= credits added (" + money(credited) + ")");
}

} // namespace

int slicesKeysDrill(const Options& o) {
    Verdict v("budget slices and keys: a revoked key, a top-up");
    for (const auto& target : ledgerTargets(o)) {
        std::printf("\n  ledger: %s\n", target.name.c_str());
        // slice_idle_seconds 5: a slice outlives the revocation bound (auth_cache_ms, 1 s).
        DrillStack s(R"("rate_limit_per_minute": 0, )" + sliceSettings("1", 5), target.uri, {},
                     kPrices);
        revoke(v, s);
        topUp(v, s);
    }
    return v.finish();
}

} // namespace drills
