// Exchange: the steps of one billed request, top to bottom.
#include "proxy/exchange.hpp"

#include <cstdio>
#include <random>

#include "core/text.hpp"
#include "proxy/access_log.hpp"
#include "trollproxy/pricing.hpp"

namespace trollproxy::internal {

namespace {

// The time (ms, 11 hex digits) first, then 52 random bits: one process's ids
// sort by time, so the ledger's request log index takes a batch's entries at
// its end (a page or two per batch written, not a page per charge).
std::string newRequestId(const std::string& prefix, std::int64_t wallMs) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    char buf[32];
    std::snprintf(buf, sizeof buf, "%011llx%013llx",
                  static_cast<unsigned long long>(wallMs) & 0xfffffffffffULL,
                  static_cast<unsigned long long>(rng() & 0xfffffffffffffULL));
    return prefix + buf;
}

HeaderList rateHeaders(const RateDecision& rate) {
    return {{"X-RateLimit-Limit", std::to_string(rate.limit)},
            {"X-RateLimit-Remaining", std::to_string(rate.remaining)},
            {"X-RateLimit-Reset", std::to_string(rate.resetSeconds)}};
}

std::string withCapNote(std::string note, bool capped) {
    if (!capped)
        return note;
    return note.empty() ? "charge capped by the client's limit"
                        : note + "; charge capped by the client's limit";
}

} // namespace

Exchange::Exchange(const ExchangeParts& parts, std::shared_ptr<const Routing> routing,
                   const HttpRequest& http, ApiFormat format, std::string route)
    : parts_(parts), routing_(std::move(routing)), http_(&http), format_(format),
      route_(std::move(route)),
      requestId_(newRequestId(parts.requestIdPrefix, parts.clock.wallMs())),
      startNs_(parts.clock.steadyNs()), promptBytes_(static_cast<std::int64_t>(http.body.size())),
      hold_(parts.ledger, parts.slices, parts.doubtful, parts.metrics, parts.clock) {}

HttpResponse Exchange::run() {
    Outcome o = authenticate();
    if (o.ok())
        o = rateLimit();
    if (o.ok())
        o = parse();
    if (o.ok())
        o = checkPreviousResponse();
    if (o.ok())
        o = reserve();
    if (!o.ok()) {
        http_ = nullptr;
        return decline(o, "");
    }
    HttpResponse r = forward();
    http_ = nullptr;
    for (auto& h : rateHeaders(rate_))
        r.headers.push_back(std::move(h));
    r.headers.emplace_back("x-request-id", requestId_);
    return r;
}

Outcome Exchange::authenticate() {
    const ProxySettings& settings = routing_->config->settings;
    if (promptBytes_ > settings.maxBodyBytes)
        return refuse(OutcomeKind::BodyTooLarge, "request body is larger than " +
                                                     std::to_string(settings.maxBodyBytes) +
                                                     " bytes");
    if (http_->admitted) {
        account_ = *http_->admitted;
        return {};
    }
    return parts_.auth.authenticate(*http_, authPolicy(settings), account_);
}

Outcome Exchange::rateLimit() {
    rate_ = routing_->rateLimiter->check(account_.keyId, parts_.clock.steadyMs());
    if (rate_.allowed)
        return {};
    return refuse(OutcomeKind::RateLimited,
                  "rate limit exceeded: " + std::to_string(rate_.limit) + " requests per minute",
                  {{"Retry-After", std::to_string(rate_.retryAfterSeconds)},
                   {"X-RateLimit-Limit", std::to_string(rate_.limit)},
                   {"X-RateLimit-Remaining", "0"},
                   {"X-RateLimit-Reset", std::to_string(rate_.resetSeconds)}});
}

Outcome Exchange::parse() {
    auto parsed = parseClientRequest(format_, http_->body);
    if (!parsed)
        return refuse(OutcomeKind::BadRequest, parsed.error().message);
    request_ = std::move(*parsed);
    model_ = routing_->config->findModel(request_.model);
    if (!model_)
        return refuse(OutcomeKind::ModelNotFound,
                      "model \"" + request_.model + "\" does not exist");
    if (format_ == ApiFormat::Responses && !routing_->serves(ApiFormat::Responses))
        return refuse(OutcomeKind::ResponsesEndpointMissing,
                      "this proxy serves no /v1/responses: its config has no endpoint "
                      "whose base_url ends in /responses");
    return {};
}

// A user continues only responses this user created through the proxy.
Outcome Exchange::checkPreviousResponse() {
    if (format_ != ApiFormat::Responses || request_.previousResponseId.empty())
        return {};
    auto owner = parts_.ledger.responseOwner(request_.previousResponseId);
    if (!owner && owner.error().code != ErrorCode::NotFound)
        return refuse(OutcomeKind::LedgerUnavailable,
                      "billing is temporarily unavailable; retry later");
    if (!owner || *owner != account_.userId)
        return refuse(OutcomeKind::PreviousResponseNotFound,
                      "Previous response with id '" + request_.previousResponseId + "' not found.");
    return {};
}

// Holds the estimated maximum cost before anything reaches the upstream.
Outcome Exchange::reserve() {
    const ProxySettings& settings = routing_->config->settings;
    holdAmount_ = holdEstimate(model_->prices, http_->body, request_.maxOutputTokens,
                               request_.choices, settings.defaultMaxOutputTokens);
    // With an output limit the hold bounds the whole cost, except when the
    // request continues a stored response: its input is not in the body.
    holdBounds_ = request_.maxOutputTokens >= 0 && request_.previousResponseId.empty();
    HoldRequest hold{requestId_, account_.userId, model_->pool, holdAmount_,
                     parts_.clock.wallMs() + settings.holdTtlSeconds * 1000};
    switch (hold_.reserve(hold, slicePolicy(settings))) {
    case ReserveStatus::Reserved:
        return {};
    case ReserveStatus::InsufficientCredits:
        return refuse(OutcomeKind::InsufficientCredits,
                      std::string("insufficient credits in the ") + poolName(model_->pool) +
                          " balance for this request (needs up to " + holdAmount_.toString() +
                          " USD)");
    case ReserveStatus::LedgerUnavailable:
        break;
    }
    if (settings.ledgerFailureMode == LedgerFailureMode::FailOpen)
        return {}; // serve now, the charge is journalled
    return refuse(OutcomeKind::LedgerUnavailable,
                  "billing is temporarily unavailable; retry later");
}

HttpResponse Exchange::forward() {
    UpstreamCall call;
    call.routing = routing_.get();
    call.format = format_;
    call.clientHeaders = &http_->headers;
    call.upstreamName = model_->upstream;
    call.body = rewriteForUpstream(format_, http_->body, request_, model_->upstreamModelId);
    call.noEndpoint = refuse(OutcomeKind::ModelNotFound,
                             "model \"" + request_.model + "\" is not served on " + route_);
    UpstreamAttempt a = callUpstream(call, parts_.upstream, parts_.metrics, parts_.clock);
    if (a.transfer)
        return request_.stream ? answerStream(std::move(a.transfer)) : answerWhole(*a.transfer);
    hold_.release();
    if (!a.relayed)
        return decline(a.failure, "upstream failed");
    // The upstream refused the request itself: the client sees why.
    log(a.relayed->status, nullptr, "upstream refused the request");
    return std::move(*a.relayed);
}

HttpResponse Exchange::answerWhole(UpstreamTransfer& t) {
    WholeAnswer answer = readWholeAnswer(t, format_, promptBytes_);
    if (answer.broke) {
        hold_.release();
        return decline(
            refuse(OutcomeKind::UpstreamError, "the upstream answer broke off: " + answer.error),
            "upstream answer broke");
    }
    Billed billed = settle(answer.served, t.status());
    if (!billed.recorded)
        return decline(refuse(OutcomeKind::LedgerUnavailable,
                              "billing is temporarily unavailable; retry later"),
                       "charge could not be recorded; answer withheld");
    HttpResponse r = relayAnswer(t, t.status(), std::move(answer.body));
    r.headers.emplace_back("x-trollproxy-cost", billed.charged.toString());
    if (billed.shortfall.nanos > 0)
        r.headers.emplace_back("x-trollproxy-shortfall", billed.shortfall.toString());
    return r;
}

HttpResponse Exchange::answerStream(std::unique_ptr<UpstreamTransfer> t) {
    HttpResponse r;
    r.status = t->status();
    std::string ct = t->header("content-type");
    r.contentType = ct.empty() ? "text/event-stream" : ct;
    r.headers.emplace_back("Cache-Control", "no-cache");
    bool isSse = ct.empty() || asciiLower(ct).find("text/event-stream") != std::string::npos;
    // The function owns the exchange and the transfer: if it never runs, the
    // exchange's end releases the hold (nothing was served).
    std::shared_ptr<UpstreamTransfer> transfer = std::move(t);
    r.stream = [self = shared_from_this(), transfer, isSse](ResponseWriter& w) {
        self->pump(*transfer, w, isSse);
    };
    return r;
}

void Exchange::pump(UpstreamTransfer& t, ResponseWriter& w, bool isSse) {
    StreamRelay how;
    how.format = format_;
    how.isSse = isSse;
    how.stripUsage = format_ == ApiFormat::OpenAI && !request_.clientAskedUsage;
    how.promptBytes = promptBytes_;
    how.holdTtlMs = routing_->config->settings.holdTtlSeconds * 1000;
    how.hold = &hold_;
    how.deadline = {&parts_.shutdownDeadlineMs, &parts_.clock};
    ServedUsage served = relayStream(how, t, w);
    if (served.servedNothing) {
        hold_.release();
        log(502, nullptr, served.note);
        return;
    }
    Billed billed = settle(served, t.status());
    if (!billed.recorded)
        log(t.status(), nullptr, "charge could not be recorded");
}

Billed Exchange::settle(const ServedUsage& served, int status) {
    BillInput in;
    in.requestId = requestId_;
    in.account = account_;
    in.model = model_;
    in.usage = served.usage;
    in.maxOutputTokens = request_.maxOutputTokens;
    in.choices = request_.choices;
    in.holdAmount = holdAmount_;
    in.holdBounds = holdBounds_;
    in.status = status;
    in.latencyMs = elapsedMs();
    in.responseId = served.responseId;
    Billed billed = parts_.biller.bill(in, hold_, routing_->config->settings.settlement);
    if (billed.recorded)
        log(status, &billed, withCapNote(served.note, billed.capped));
    return billed;
}

HttpResponse Exchange::decline(const Outcome& outcome, std::string_view note) {
    const int status = httpStatus(outcome.kind);
    // Refusals of a known caller go to the request log as well (its status,
    // no cost), except the proxy's own rate limit: a flood of those must not
    // become ledger writes.
    if (!account_.userId.empty() &&
        (status == 402 || status == 503 || outcome.kind == OutcomeKind::UpstreamRateLimited)) {
        LogEntry e;
        e.requestId = requestId_;
        e.userId = account_.userId;
        e.keyId = account_.keyId;
        e.model = model_ ? model_->id : request_.model;
        e.creditType = poolCreditType(model_ ? model_->pool : Pool::CreditsNew);
        e.statusCode = status;
        e.latencyMs = elapsedMs();
        e.createdAtMs = parts_.clock.wallMs();
        if (!parts_.ledger.recordRequest(e))
            parts_.metrics.add(
                Metrics::series("trollproxy_ledger_errors_total", {{"op", "record"}}));
    }
    if (!account_.userId.empty())
        log(status, nullptr, note);
    return toHttp(outcome, format_);
}

void Exchange::log(int status, const Billed* billed, std::string_view note) {
    AccessRecord r;
    r.timestampMs = parts_.clock.wallMs();
    r.requestId = requestId_;
    r.user = account_.userId;
    r.model = model_ ? std::string_view(model_->id) : std::string_view(request_.model);
    r.route = route_;
    r.status = status;
    if (billed) {
        r.usage = &billed->usage;
        r.charged = billed->charged;
        r.shortfall = billed->shortfall;
    }
    r.pool = model_ ? poolName(model_->pool) : "";
    r.latencyMs = elapsedMs();
    r.note = note;
    writeAccessLog(r);
}

std::int64_t Exchange::elapsedMs() const {
    return (parts_.clock.steadyNs() - startNs_) / 1'000'000;
}

} // namespace trollproxy::internal
