// Exchange: one billed client request, from its key to its settled charge.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "proxy/billing.hpp"
#include "proxy/caller_auth.hpp"
#include "proxy/hold.hpp"
#include "proxy/metrics.hpp"
#include "proxy/outcome.hpp"
#include "proxy/relay.hpp"
#include "proxy/request_body.hpp"
#include "proxy/routing.hpp"
#include "proxy/upstream_call.hpp"
#include "trollproxy/clock.hpp"
#include "trollproxy/ledger.hpp"
#include "trollproxy/proxy.hpp"

namespace trollproxy::internal {

/// The service's parts an exchange uses. They outlive every exchange.
struct ExchangeParts {
    CreditLedger& ledger;
    SliceBook& slices;
    DoubtfulHolds& doubtful;
    CallerAuth& auth;
    Biller& biller;
    Upstream& upstream;
    Metrics& metrics;
    const Clock& clock;
    const std::atomic<std::int64_t>& shutdownDeadlineMs; ///< steady ms; 0: not shutting down
    /// Starts every request id of this process ("req_" + instance + "_"), so
    /// that a restarted process can find the holds its previous life left.
    const std::string& requestIdPrefix;
};

/// What one request owns: the caller, the routed model, the hold, the upstream
/// answer, the usage and the log record. Its steps, in order: authenticate →
/// rate limit → parse → reserve → forward → relay → settle → log. A hold not
/// settled is released when the exchange ends, whatever path it took.
class Exchange : public std::enable_shared_from_this<Exchange> {
public:
    Exchange(const ExchangeParts& parts, std::shared_ptr<const Routing> routing,
             const HttpRequest& http, ApiFormat format, std::string route);

    /// Runs the steps. A streamed answer's function finishes the exchange; the
    /// request `http` need not outlive this call.
    HttpResponse run();

private:
    Outcome authenticate();
    Outcome rateLimit();
    Outcome parse();
    Outcome checkPreviousResponse();
    Outcome reserve();
    HttpResponse forward();
    HttpResponse answerWhole(UpstreamTransfer& transfer);
    HttpResponse answerStream(std::unique_ptr<UpstreamTransfer> transfer);
    void pump(UpstreamTransfer& transfer, ResponseWriter& writer, bool isSse);
    /// Bills what was served and logs it (Billed::recorded false: the charge
    /// could be recorded nowhere, nothing logged yet).
    Billed settle(const ServedUsage& served, int status);
    /// Answers a refusal or failure: logged once the caller is known, and
    /// written to the ledger's request log for 402, 503 and an upstream 429.
    HttpResponse decline(const Outcome& outcome, std::string_view note);
    void log(int status, const Billed* billed, std::string_view note);
    std::int64_t elapsedMs() const;

    const ExchangeParts& parts_;
    std::shared_ptr<const Routing> routing_;
    const HttpRequest* http_; // only during run()
    const ApiFormat format_;
    const std::string route_;
    const std::string requestId_;
    const std::int64_t startNs_; // steady
    const std::int64_t promptBytes_;
    Account account_;
    ClientRequest request_;
    const ModelConfig* model_ = nullptr;
    RateDecision rate_;
    Hold hold_;
    Money holdAmount_;
    bool holdBounds_ = false;
};

} // namespace trollproxy::internal
