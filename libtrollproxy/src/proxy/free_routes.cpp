// Routes that are never charged: Anthropic's count_tokens and the retrieval of stored responses.
#include "proxy/free_routes.hpp"

#include "proxy/access_log.hpp"

namespace trollproxy::internal {

namespace {

// One free request: its caller, and its answer relayed from the upstream.
struct FreeRequest {
    const ExchangeParts& parts;
    std::shared_ptr<const Routing> routing;
    const HttpRequest& http;
    ApiFormat format;
    std::string route;
    std::int64_t startMs;
    Account account;

    // The caller and the rate limit; Ok when the request may go on.
    Outcome admit() {
        const ProxySettings& settings = routing->config->settings;
        if (static_cast<std::int64_t>(http.body.size()) > settings.maxBodyBytes)
            return refuse(OutcomeKind::BodyTooLarge, "request body is too large");
        if (http.admitted)
            account = *http.admitted;
        else if (Outcome o = parts.auth.authenticate(http, authPolicy(settings), account); !o.ok())
            return o;
        RateDecision rate = routing->rateLimiter->check(account.keyId, parts.clock.steadyMs());
        if (rate.allowed)
            return {};
        return refuse(OutcomeKind::RateLimited,
                      "rate limit exceeded: " + std::to_string(rate.limit) + " requests per minute",
                      {{"Retry-After", std::to_string(rate.retryAfterSeconds)}});
    }

    // Sends the request to the endpoints of `format` (`urlSuffix` appended to
    // their base_url) and relays the answer whole.
    HttpResponse relay(const std::string& upstreamName, const std::string& urlSuffix,
                       const std::string& body) {
        UpstreamCall call;
        call.routing = routing.get();
        call.format = format;
        call.clientHeaders = &http.headers;
        call.upstreamName = upstreamName;
        call.body = body;
        call.method = http.method;
        call.urlSuffix = urlSuffix;
        call.maxAttempts = 4;
        call.noEndpoint =
            refuse(OutcomeKind::EndpointMissing, "no upstream endpoint serves " + route);
        UpstreamAttempt a = callUpstream(call, parts.upstream, parts.metrics, parts.clock);
        if (a.relayed)
            return std::move(*a.relayed);
        if (!a.transfer)
            return toHttp(a.failure, format);
        std::string answer;
        if (auto r = readAll(*a.transfer, answer); !r)
            return toHttp(refuse(OutcomeKind::UpstreamError, "the upstream failed to answer"),
                          format);
        HttpResponse r = relayAnswer(*a.transfer, a.transfer->status(), std::move(answer));
        r.headers.emplace_back("x-trollproxy-cost", Money{}.toString());
        return r;
    }

    void log(int status, std::string_view model, std::string_view note) const {
        AccessRecord r;
        r.timestampMs = parts.clock.wallMs();
        r.requestId = "free";
        r.user = account.userId;
        r.model = model;
        r.route = route;
        r.status = status;
        r.latencyMs = parts.clock.steadyMs() - startMs;
        r.note = note;
        writeAccessLog(r);
    }
};

} // namespace

HttpResponse serveCountTokens(const ExchangeParts& parts, std::shared_ptr<const Routing> routing,
                              const HttpRequest& http) {
    FreeRequest fr{parts,
                   std::move(routing),
                   http,
                   ApiFormat::Anthropic,
                   "/v1/messages/count_tokens",
                   parts.clock.steadyMs(),
                   {}};
    if (Outcome o = fr.admit(); !o.ok())
        return toHttp(o, fr.format);
    auto parsed = parseClientRequest(ApiFormat::Anthropic, http.body, BodyPurpose::CountTokens);
    if (!parsed)
        return toHttp(refuse(OutcomeKind::BadRequest, parsed.error().message), fr.format);
    const ModelConfig* model = fr.routing->config->findModel(parsed->model);
    if (!model)
        return toHttp(
            refuse(OutcomeKind::ModelNotFound, "model \"" + parsed->model + "\" does not exist"),
            fr.format);
    std::string body =
        rewriteForUpstream(ApiFormat::Anthropic, http.body, *parsed, model->upstreamModelId);
    HttpResponse r = fr.relay(model->upstream, "/count_tokens", body);
    fr.log(r.status, model->id, "count_tokens: free");
    return r;
}

HttpResponse serveResponseLookup(const ExchangeParts& parts, std::shared_ptr<const Routing> routing,
                                 const HttpRequest& http, const std::string& id) {
    FreeRequest fr{parts,
                   std::move(routing),
                   http,
                   ApiFormat::Responses,
                   "/v1/responses/{id}",
                   parts.clock.steadyMs(),
                   {}};
    if (Outcome o = fr.admit(); !o.ok())
        return toHttp(o, fr.format);
    // Only the user who created a response reaches it; to anyone else it does
    // not exist.
    auto owner = parts.ledger.responseOwner(id);
    if (!owner && owner.error().code != ErrorCode::NotFound)
        return toHttp(refuse(OutcomeKind::LedgerUnavailable,
                             "billing is temporarily unavailable; retry later"),
                      fr.format);
    if (!owner || *owner != fr.account.userId)
        return toHttp(
            refuse(OutcomeKind::ResponseNotFound, "No response found with id '" + id + "'."),
            fr.format);
    HttpResponse r = fr.relay("", "/" + id, "");
    fr.log(r.status, "",
           http.method == "GET" ? "response retrieval: free" : "response deletion: free");
    return r;
}

} // namespace trollproxy::internal
