// Billing: the price of the usage, bounded by what the client agreed to, settled exactly once.
#include "proxy/billing.hpp"

#include <algorithm>
#include <cstdio>

#include "core/json_writer.hpp"
#include "trollproxy/pricing.hpp"

namespace trollproxy::internal {

namespace {

// The client's own output limit bounds what the upstream was allowed to
// produce: output beyond n × the limit is not believed. (The input part of the
// hold is an estimate from the body's size; images by URL, earlier responses
// and the upstream's own prompts can legitimately exceed it.)
Usage capOutput(const BillInput& in, bool& capped) {
    Usage priced = in.usage;
    if (!in.holdBounds)
        return priced;
    std::int64_t limit = std::min<std::int64_t>(in.maxOutputTokens, 1'000'000'000) * in.choices;
    if (priced.output > limit) {
        priced.output = limit;
        capped = true;
    }
    return priced;
}

} // namespace

Money holdEstimate(const PriceTable& p, std::string_view body, std::int64_t maxOutputTokens,
                   std::int64_t choices, std::int64_t defaultMaxOutput) {
    // Beyond the body: the upstream's own prompt for tools and the like, and
    // each remote resource such as an image by URL.
    constexpr std::int64_t kUnseenInputTokens = 1'000;
    constexpr std::int64_t kTokensPerRemoteResource = 3'000;
    PriceTable worst = p;
    worst.input = std::max({p.input, p.cacheWrite, p.cacheRead});
    // 1-hour cache writes happen only when the request asks for them
    // (cache_control {"ttl": "1h"}).
    if (body.find("\"1h\"") != std::string_view::npos)
        worst.input = std::max(worst.input, p.cacheWrite1h.value_or(Money{2 * p.input.nanos}));
    Usage u;
    std::int64_t remote = 0; // strings starting with http:// or https://, in one pass
    for (std::size_t at = body.find("\"http"); at != std::string_view::npos;
         at = body.find("\"http", at + 5)) {
        std::string_view rest = body.substr(at + 5);
        remote += rest.starts_with("://") || rest.starts_with("s://");
    }
    u.uncachedInput = static_cast<std::int64_t>(body.size() / 2 + 1) + kUnseenInputTokens +
                      std::min<std::int64_t>(remote, 100'000) * kTokensPerRemoteResource;
    // Every one of the n answers may be as long as the limit allows. Bounded
    // so the price cannot overflow; a hold that large is refused anyway.
    constexpr std::int64_t kMaxHoldTokens = 1'000'000'000;
    std::int64_t perAnswer = maxOutputTokens >= 0 ? maxOutputTokens : defaultMaxOutput;
    perAnswer = std::min(perAnswer, kMaxHoldTokens);
    u.output = std::min(perAnswer * choices, kMaxHoldTokens);
    u.uncachedInput = std::min(u.uncachedInput, kMaxHoldTokens);
    return priceUsage(worst, u);
}

Charge Biller::charge(const BillInput& in, const Usage& priced, Money cost) const {
    Charge ch;
    ch.requestId = in.requestId;
    ch.userId = in.account.userId;
    ch.keyId = in.account.keyId;
    ch.model = in.model->id;
    ch.pool = in.model->pool;
    ch.usage = priced;
    ch.cost = cost;
    ch.statusCode = in.status;
    ch.latencyMs = in.latencyMs;
    ch.success = in.status >= 200 && in.status < 300;
    ch.createdAtMs = clock_.wallMs();
    ch.responseId = in.responseId;
    return ch;
}

Billed Biller::bill(const BillInput& in, Hold& hold, Settlement mode) {
    Billed billed;
    Usage priced = capOutput(in, billed.capped);
    billed.cost = priceUsage(in.model->prices, priced);
    // A hold sized from the client's own limit is what the user agreed to pay
    // at most: a usage priced above it (an upstream reporting absurd input) is
    // charged the hold.
    if (in.holdBounds && billed.cost.nanos > in.holdAmount.nanos) {
        billed.cost = in.holdAmount;
        billed.capped = true;
    }
    billed.usage = priced;
    billed.charged = billed.cost;
    Charge ch = charge(in, priced, billed.cost);
    // A charge its hold covers cannot fall short: it may be settled after the
    // answer, from the journal. Otherwise the shortfall is known only once settled.
    const bool covered = hold.covers(billed.cost);
    hold.drawOn(ch);
    hold.settled();
    bool queued = false;
    if (mode == Settlement::JournalFirst && covered && queue_.submit(ch, false)) {
        billed.recorded = true;
        queued = true;
    } else {
        queued = settleNow(ch, billed);
    }
    if (!queued)
        slices_.settled(ch.holdId); // the ledger has it (or nothing will)
    if (billed.recorded)
        count(in, billed);
    return billed;
}

bool Biller::settleNow(const Charge& ch, Billed& billed) {
    SettleOutcome out = ledger_.settle(ch);
    if (out.status != SettleStatus::LedgerUnavailable) {
        if (out.status == SettleStatus::Settled) {
            billed.charged = out.charged;
            billed.shortfall = out.shortfall;
        }
        billed.recorded = true;
        return false;
    }
    metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "settle"}}));
    if (auto j = queue_.submit(ch, true); !j) {
        metrics_.add("trollproxy_unrecorded_charges_total");
        std::fprintf(stderr, "%s\n",
                     JsonWriter()
                         .beginObject()
                         .field("level", "critical")
                         .field("msg", "charge not recorded")
                         .field("request_id", ch.requestId)
                         .field("cost", ch.cost.toString())
                         .field("error", j.error().message)
                         .endObject()
                         .str()
                         .c_str());
        return false;
    }
    metrics_.add("trollproxy_journalled_charges_total");
    billed.recorded = true;
    return true;
}

void Biller::count(const BillInput& in, const Billed& billed) {
    const std::string pool = poolName(in.model->pool);
    const std::string& model = in.model->id;
    if (billed.shortfall.nanos > 0)
        metrics_.addUsd(Metrics::series("trollproxy_shortfall_usd_total", {{"pool", pool}}),
                        billed.shortfall);
    metrics_.addUsd(
        Metrics::series("trollproxy_cost_usd_total", {{"model", model}, {"pool", pool}}),
        billed.cost);
    const Usage& u = billed.usage;
    for (auto [kind, n] : {std::pair{"input", u.uncachedInput},
                           {"output", u.output},
                           {"cache_write", u.cacheWrite},
                           {"cache_read", u.cacheRead}})
        metrics_.add(Metrics::series("trollproxy_tokens_total",
                                     {{"model", model}, {"pool", pool}, {"kind", kind}}),
                     static_cast<double>(n));
}

} // namespace trollproxy::internal
