// Billing: prices a served request's usage, caps it by the client's limits and settles it.
#pragma once

#include <string>
#include <string_view>

#include "proxy/hold.hpp"
#include "proxy/metrics.hpp"
#include "proxy/settlement_queue.hpp"
#include "trollproxy/clock.hpp"
#include "trollproxy/config.hpp"
#include "trollproxy/ledger.hpp"

namespace trollproxy::internal {

/// What a served request is billed from.
struct BillInput {
    std::string requestId;
    Account account;
    const ModelConfig* model = nullptr;
    Usage usage;
    /// The client's output limit per answer (−1: none) and number of answers.
    std::int64_t maxOutputTokens = -1;
    std::int64_t choices = 1;
    /// The hold's amount, and whether it bounds the charge (the client set an
    /// output limit and the input is all in the body).
    Money holdAmount;
    bool holdBounds = false;
    int status = 200;
    std::int64_t latencyMs = 0;
    std::string responseId;
};

/// What bill() did with one request's usage.
struct Billed {
    bool recorded = false; ///< false: the charge could be recorded nowhere
    Money cost;            ///< the price of the usage, capped by a bounding hold
    Money charged;         ///< what the balance gave (cost − shortfall)
    Money shortfall;       ///< cost the balance could not cover
    bool capped = false; ///< output beyond n × the client's limit, or a cost above a bounding hold
    Usage usage;         ///< the usage charged (output capped)
};

/// An upper bound of a request's cost, held before it is forwarded: every 2
/// bytes of the body a token at the dearest input price, plus what the body
/// does not show, plus the largest output the request allows (the client's
/// limit, else `defaultMaxOutput`, times n).
Money holdEstimate(const PriceTable& prices, std::string_view body, std::int64_t maxOutputTokens,
                   std::int64_t choices, std::int64_t defaultMaxOutput);

/// Settles charges: journal-first when the hold covers the charge and the
/// settings ask for it (the flusher settles it in a batch), else in the ledger
/// now, journalled while the ledger is down. A charge held by a slice draws on
/// it. Thread-safe.
class Biller {
public:
    Biller(CreditLedger& ledger, SettlementQueue& queue, SliceBook& slices, Metrics& metrics,
           const Clock& clock)
        : ledger_(ledger), queue_(queue), slices_(slices), metrics_(metrics), clock_(clock) {}

    /// Prices, caps, settles (the hold becomes the charge) and counts.
    Billed bill(const BillInput& input, Hold& hold, Settlement mode);

private:
    Charge charge(const BillInput& input, const Usage& priced, Money cost) const;
    /// Settles in the ledger now; journals (fsync'd) when it is down. True
    /// when the charge went to the queue (settled later).
    bool settleNow(const Charge& charge, Billed& billed);
    void count(const BillInput& input, const Billed& billed);

    CreditLedger& ledger_;
    SettlementQueue& queue_;
    SliceBook& slices_;
    Metrics& metrics_;
    const Clock& clock_;
};

} // namespace trollproxy::internal
