// Routes that are never charged: Anthropic's count_tokens and the retrieval of stored responses.
#include "core/json_locate.hpp"
#include "proxy/api_errors.hpp"
#include "proxy/proxy_service.hpp"

namespace trollproxy::internal {

RequestContext ProxyServiceImpl::freeContext(const HttpRequest& http, ApiFormat format,
                                             std::string route) const {
    RequestContext ctx;
    ctx.http = &http;
    ctx.routing = routing();
    ctx.format = format;
    ctx.route = std::move(route);
    ctx.requestId = "free";
    ctx.start = std::chrono::steady_clock::now();
    return ctx;
}

std::optional<HttpResponse> ProxyServiceImpl::admitFree(RequestContext& ctx) {
    const HttpRequest& http = *ctx.http;
    if (static_cast<std::int64_t>(http.body.size()) > ctx.routing->config->settings.maxBodyBytes)
        return apiError(ctx.format, 413, "request body is too large");
    if (http.admitted) {
        ctx.account = *http.admitted;
    } else {
        HttpResponse refusal;
        auto account = authenticateCaller(http, ctx.format, refusal);
        if (!account)
            return refusal;
        ctx.account = std::move(*account);
    }
    RateDecision rate = ctx.routing->rateLimiter->check(ctx.account.keyId, steadyMs());
    if (!rate.allowed) {
        HttpResponse r =
            apiError(ctx.format, 429,
                     "rate limit exceeded: " + std::to_string(rate.limit) + " requests per minute",
                     "rate_limit_exceeded");
        r.headers.emplace_back("Retry-After", std::to_string(rate.retryAfterSeconds));
        return r;
    }
    return std::nullopt;
}

HttpResponse ProxyServiceImpl::relayFree(RequestContext& ctx, ApiFormat format,
                                         const std::string& upstreamName,
                                         const std::string& urlSuffix, const std::string& method,
                                         const std::string& body) {
    int attempts = 0;
    bool setAsideOne = false;
    for (const EndpointRoute& ep : ctx.routing->endpoints) {
        if (ep.format != format || (!upstreamName.empty() && !ep.endpoint.upstream.empty() &&
                                    ep.endpoint.upstream != upstreamName))
            continue;
        std::string url = ep.endpoint.baseUrl.substr(0, ep.endpoint.baseUrl.find('?')) + urlSuffix;
        for (std::size_t k : ep.keys->usable(steadyMs())) {
            if (++attempts > 4)
                break;
            UpstreamRequest req{url, upstreamHeaders(ctx, ep.keys->key(k)),
                                method == "GET" ? "" : body, method};
            auto started = upstream().start(req);
            if (!started)
                continue;
            std::unique_ptr<UpstreamTransfer> t = std::move(*started);
            std::string answer;
            if (auto r = readAll(*t, answer); !r)
                continue;
            int status = t->status();
            std::int64_t wait = 0;
            KeyVerdict verdict = status >= 200 && status < 300
                                     ? KeyVerdict::Fine
                                     : applyRefusal(*ep.keys, k, *t, answer, setAsideOne, wait);
            if (verdict != KeyVerdict::Fine || status >= 500)
                continue;
            HttpResponse r;
            r.status = status;
            r.body = status >= 200 && status < 300 ? std::move(answer)
                                                   : redactKeys(std::move(answer), *ep.keys);
            std::string ct = t->header("content-type");
            r.contentType = ct.empty() ? "application/json" : ct;
            r.headers.emplace_back("x-trollproxy-cost", Money{}.toString());
            return r;
        }
    }
    if (attempts == 0 && !hasEndpoint(*ctx.routing, format))
        return apiError(ctx.format, 404, "no upstream endpoint serves " + ctx.route,
                        "endpoint_missing");
    return apiError(ctx.format, 502, "the upstream failed to answer", "upstream_error");
}

HttpResponse ProxyServiceImpl::serveCountTokens(const HttpRequest& http) {
    RequestContext ctx = freeContext(http, ApiFormat::Anthropic, "/v1/messages/count_tokens");
    if (auto refused = admitFree(ctx))
        return std::move(*refused);
    auto parsed = parseClientRequest(ApiFormat::Anthropic, http.body, BodyPurpose::CountTokens);
    if (!parsed)
        return apiError(ctx.format, 400, parsed.error().message);
    ctx.request = std::move(*parsed);
    ctx.model = ctx.routing->config->findModel(ctx.request.model);
    if (!ctx.model)
        return apiError(ctx.format, 404, "model \"" + ctx.request.model + "\" does not exist",
                        "model_not_found");
    std::string body = rewriteForUpstream(ApiFormat::Anthropic, http.body, ctx.request,
                                          ctx.model->upstreamModelId);
    HttpResponse r =
        relayFree(ctx, ApiFormat::Anthropic, ctx.model->upstream, "/count_tokens", "POST", body);
    finishLog(ctx, r.status, nullptr, nullptr, "count_tokens: free");
    return r;
}

HttpResponse ProxyServiceImpl::serveResponseLookup(const HttpRequest& http, const std::string& id) {
    RequestContext ctx = freeContext(http, ApiFormat::Responses, "/v1/responses/{id}");
    if (auto refused = admitFree(ctx))
        return std::move(*refused);
    // Only the user who created a response reaches it; to anyone else it does
    // not exist.
    auto owner = ledger_->responseOwner(id);
    if (!owner && owner.error().code != ErrorCode::NotFound)
        return apiError(ctx.format, 503, "billing is temporarily unavailable; retry later",
                        "ledger_unavailable");
    if (!owner || *owner != ctx.account.userId)
        return apiError(ctx.format, 404, "No response found with id '" + id + "'.",
                        "response_not_found");
    HttpResponse r = relayFree(ctx, ApiFormat::Responses, "", "/" + id, http.method, "");
    finishLog(ctx, r.status, nullptr, nullptr,
              http.method == "GET" ? "response retrieval: free" : "response deletion: free");
    return r;
}

} // namespace trollproxy::internal
