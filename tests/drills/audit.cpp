// The per-request billing audit: every served answer charged once at its price, nothing else
// charged.
#include <cstdio>
#include <set>

#include "drill.hpp"

using namespace trollproxy;

namespace drills {

Audit audit(Verdict& v, DrillStack& s, const std::string& user, Money start,
            const std::vector<Outcome>& outcomes, bool allowUnmatched) {
    Audit a;
    auto logs = s.logs(user, &a.duplicates);
    // Refusals are in the request log too (402, 503, an upstream 429), with no
    // cost and success false: the audit is about charges.
    std::erase_if(logs,
                  [](const auto& kv) { return !kv.second.success && kv.second.cost.nanos == 0; });
    Balance b = s.balance(user);
    a.billed = static_cast<int>(logs.size());
    a.decrease = start - b.creditsNew;
    std::set<Money> fullPrices;
    std::set<std::string> seen;
    for (const auto& o : outcomes) {
        if (o.requestId.empty())
            continue;
        seen.insert(o.requestId);
        Money full = priceUsage(s.prices, o.shot.usage);
        fullPrices.insert(full);
        auto it = logs.find(o.requestId);
        const LogEntry* e = it == logs.end() ? nullptr : &it->second;
        switch (o.shot.fault) {
        case Fault::None:
        case Fault::SlowOk:
            if (o.complete && !e)
                ++a.missing;
            a.served += o.complete;
            if (e && (e->cost != full || e->usage.estimated))
                ++a.wrongCost;
            break;
        case Fault::Cut3:
            a.served += o.status == 200;
            if (o.status == 200 && !e)
                ++a.missing;
            if (e && e->cost != priceUsage(s.prices, cutUsage(o.shot, 3)))
                ++a.wrongCost;
            break;
        case Fault::HangUp:
            if (e && (e->cost > full || e->cost.nanos <= 0 || !e->usage.estimated))
                ++a.wrongCost;
            break;
        default:
            if (e)
                ++a.unservedBilled;
        }
    }
    for (const auto& [id, e] : logs) {
        a.logged += e.cost;
        if (!e.usage.estimated) {
            a.fullCharges += e.cost;
            ++a.fullEntries;
        }
        if (!seen.count(id)) {
            ++a.unmatched;
            if (!fullPrices.count(e.cost) || e.usage.estimated)
                ++a.wrongCost;
        }
    }
    std::printf("  audit: %d whole answers, %d log entries (%d duplicates), %d served without "
                "entry, %d wrong "
                "costs, %d charged for nothing served, %d entries without a client-visible id\n",
                a.served, a.billed, a.duplicates, a.missing, a.wrongCost, a.unservedBilled,
                a.unmatched);
    std::printf("  money: balance decrease %s, logged costs %s\n", money(a.decrease).c_str(),
                money(a.logged).c_str());
    v.check(a.missing == 0, "every answer served was billed");
    v.check(a.duplicates == 0, "no request billed twice");
    v.check(a.wrongCost == 0, "every charge is the price of what was served");
    v.check(a.unservedBilled == 0, "nothing billed for requests that served nothing");
    if (!allowUnmatched)
        v.check(a.unmatched == 0, "no charge the clients did not see");
    v.check(a.logged == a.decrease, "sum of logged costs = balance decrease");
    v.check(b.creditsNew.nanos >= 0, "no balance field below zero");
    return a;
}

} // namespace drills
