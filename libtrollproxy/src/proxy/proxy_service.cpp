// ProxyService: routing, authentication, rate limiting, holds, and the service's upkeep.
#include "proxy/proxy_service.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <random>

#include "trollproxy/pricing.hpp"
#include "core/json_locate.hpp"
#include "core/json_writer.hpp"
#include "proxy/api_errors.hpp"

namespace trollproxy::internal {

bool hasEndpoint(const Routing& routing, ApiFormat format) {
    for (const auto& ep : routing.endpoints) {
        if (ep.format == format)
            return true;
    }
    return false;
}

std::int64_t wallMs() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::int64_t steadyMs() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

namespace {

std::string newRequestId() {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    char buf[40];
    std::snprintf(buf, sizeof buf, "req_%016llx%08llx", static_cast<unsigned long long>(rng()),
                  static_cast<unsigned long long>(rng() & 0xffffffffULL));
    return buf;
}

std::vector<std::string> splitKeys(const std::string& s) {
    std::vector<std::string> out;
    std::size_t p = 0;
    while (p <= s.size()) {
        std::size_t e = s.find_first_of(",\n", p);
        if (e == std::string::npos)
            e = s.size();
        std::string k = s.substr(p, e - p);
        while (!k.empty() && std::isspace(static_cast<unsigned char>(k.back())))
            k.pop_back();
        std::size_t b = 0;
        while (b < k.size() && std::isspace(static_cast<unsigned char>(k[b])))
            ++b;
        k = k.substr(b);
        if (!k.empty() && k[0] != '#')
            out.push_back(k);
        p = e + 1;
    }
    return out;
}

std::string header(const HttpRequest& r, std::string_view name) {
    for (const auto& [k, v] : r.headers) {
        if (k.size() == name.size() &&
            std::equal(k.begin(), k.end(), name.begin(),
                       [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; }))
            return v;
    }
    return {};
}

std::string clientKey(const HttpRequest& r) {
    std::string auth = header(r, "authorization");
    if (auth.size() > 7 && (auth.compare(0, 7, "Bearer ") == 0 || auth.compare(0, 7, "bearer ") == 0))
        return auth.substr(7);
    return header(r, "x-api-key");
}

// The API format of a billed route; nullopt for every other path.
std::optional<ApiFormat> billedRouteFormat(std::string_view path) {
    if (path == "/v1/chat/completions")
        return ApiFormat::OpenAI;
    if (path == "/v1/messages")
        return ApiFormat::Anthropic;
    if (path == "/v1/responses")
        return ApiFormat::Responses;
    return std::nullopt;
}

constexpr std::string_view kCountTokensPath = "/v1/messages/count_tokens";
constexpr std::string_view kResponsesPrefix = "/v1/responses/";

// The id in /v1/responses/{id}, or "".
std::string_view responseIdInPath(std::string_view path) {
    if (path.substr(0, kResponsesPrefix.size()) != kResponsesPrefix)
        return {};
    std::string_view id = path.substr(kResponsesPrefix.size());
    return id.find('/') == std::string_view::npos ? id : std::string_view{};
}

HttpResponse jsonResponse(int status, std::string body) {
    HttpResponse r;
    r.status = status;
    r.body = std::move(body);
    return r;
}

} // namespace

Result<std::shared_ptr<const Routing>> ProxyServiceImpl::buildRouting(
    Config config, const KeySource& keys,
    const std::map<std::string, std::shared_ptr<KeyPool>>& previous) {
    auto getenv = keys.getenv ? keys.getenv : [](const std::string& n) {
        const char* v = std::getenv(n.c_str());
        return std::string(v ? v : "");
    };
    auto routing = std::make_shared<Routing>();
    std::map<std::string, std::shared_ptr<KeyPool>> pools;
    for (const auto& ep : config.endpoints) {
        ApiFormat format = ApiFormat::OpenAI;
        switch (endpointApi(ep)) {
        case EndpointApi::ChatCompletions:
            format = ApiFormat::OpenAI;
            break;
        case EndpointApi::Messages:
            format = ApiFormat::Anthropic;
            break;
        case EndpointApi::Responses:
            format = ApiFormat::Responses;
            break;
        case EndpointApi::None:
            continue; // serves no route
        }
        std::string source = ep.apiKeyEnv.empty() ? "TROLLPROXY_UPSTREAM_KEYS" : ep.apiKeyEnv;
        std::vector<std::string> list = splitKeys(getenv(source));
        if (list.empty() && ep.apiKeyEnv.empty() && !config.settings.keyFile.empty()) {
            std::ifstream in(config.settings.keyFile);
            std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
            list = splitKeys(all);
            source = "file:" + config.settings.keyFile;
        }
        if (list.empty())
            return Error{ErrorCode::InvalidArgument,
                         config.sourceName + ": endpoint \"" + ep.name + "\" has no upstream key (set " +
                             (ep.apiKeyEnv.empty() ? std::string("TROLLPROXY_UPSTREAM_KEYS or trollproxy.key_file")
                                                   : ep.apiKeyEnv) +
                             ")"};
        auto& pool = pools[source];
        if (!pool) {
            auto old = previous.find(source);
            bool same = old != previous.end() && old->second->size() == list.size();
            for (std::size_t i = 0; same && i < list.size(); ++i)
                same = old->second->key(i) == list[i];
            pool = same ? old->second : std::make_shared<KeyPool>(list);
        }
        routing->endpoints.push_back({ep, format, pool, source});
    }
    routing->rateLimiter = std::make_shared<RateLimiter>(config.settings.rateLimitPerMinute);
    routing->config = std::make_shared<const Config>(std::move(config));
    return std::shared_ptr<const Routing>(routing);
}

ProxyServiceImpl::ProxyServiceImpl(std::shared_ptr<const Routing> routing,
                                   std::unique_ptr<CreditLedger> ledger,
                                   std::unique_ptr<Upstream> upstream, KeySource keys)
    : routing_(std::move(routing)), ledger_(std::move(ledger)), upstream_(std::move(upstream)),
      keySource_(std::move(keys)), journal_(routing_->config->journalFile()) {
    tick();
}

std::shared_ptr<const Routing> ProxyServiceImpl::routing() const {
    std::lock_guard lock(routingMutex_);
    return routing_;
}

std::shared_ptr<const Config> ProxyServiceImpl::config() const {
    return routing()->config;
}

Result<void> ProxyServiceImpl::reload(Config config) {
    std::map<std::string, std::shared_ptr<KeyPool>> previous;
    for (const auto& r : routing()->endpoints)
        previous[r.keySource] = r.keys;
    auto next = buildRouting(std::move(config), keySource_, previous);
    if (!next)
        return next.error();
    std::lock_guard lock(routingMutex_);
    routing_ = *next;
    return {};
}

HttpResponse ProxyServiceImpl::handle(const HttpRequest& request) {
    auto start = std::chrono::steady_clock::now();
    std::string route = request.path;
    HttpResponse resp;
    try {
        if (auto format = billedRouteFormat(request.path)) {
            if (request.method != "POST") {
                resp = apiError(*format, 405, "use POST");
            } else {
                resp = serveCompletion(request, *format, route);
            }
        } else if (request.path == kCountTokensPath) {
            resp = request.method == "POST" ? serveCountTokens(request)
                                            : apiError(ApiFormat::Anthropic, 405, "use POST");
        } else if (auto id = responseIdInPath(request.path); !id.empty()) {
            route = "/v1/responses/{id}";
            resp = request.method == "GET" || request.method == "DELETE"
                       ? serveResponseLookup(request, std::string(id))
                       : apiError(ApiFormat::Responses, 405, "use GET or DELETE");
        } else if (request.method == "GET" && request.path == "/v1/models") {
            resp = listModels();
        } else if (request.method == "GET" && request.path == "/health") {
            resp = jsonResponse(200, "{\"status\":\"ok\"}");
        } else if (request.method == "GET" && request.path == "/ready") {
            bool ok = ready_.load();
            resp = jsonResponse(ok ? 200 : 503, ok ? "{\"status\":\"ready\"}"
                                                   : "{\"status\":\"ledger unavailable\"}");
        } else {
            route = "other";
            resp = apiError(ApiFormat::OpenAI, 404, "no route for " + request.method + " " + request.path);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "{\"level\":\"error\",\"msg\":%s}\n", jsonQuote(e.what()).c_str());
        resp = apiError(request.path.rfind("/v1/messages", 0) == 0 ? ApiFormat::Anthropic
                                                                   : ApiFormat::OpenAI,
                        500, "internal error");
    }
    metrics_.add(Metrics::series("trollproxy_requests_total",
                                 {{"route", route}, {"status", std::to_string(resp.status)}}));
    if (!resp.stream) {
        metrics_.observeLatency(route, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return resp;
}

HttpResponse ProxyServiceImpl::listModels() const {
    auto cfg = config();
    std::string body = "{\"object\":\"list\",\"data\":[";
    for (std::size_t i = 0; i < cfg->models.size(); ++i) {
        const auto& m = cfg->models[i];
        body += (i ? "," : "") + std::string("{\"id\":") + jsonQuote(m.id) +
                ",\"object\":\"model\",\"created\":1700000000,\"owned_by\":" +
                jsonQuote(m.upstream.empty() ? "trollproxy" : m.upstream) + "}";
    }
    body += "]}";
    return jsonResponse(200, std::move(body));
}

Money ProxyServiceImpl::holdEstimate(const RequestContext& ctx) const {
    // An upper bound: every 2 bytes of the body a token at the dearest input
    // price, plus what the body does not show (the upstream's own prompt for
    // tools and the like, and each remote resource such as an image by URL),
    // plus the largest output the request allows.
    constexpr std::int64_t kUnseenInputTokens = 1'000;
    constexpr std::int64_t kTokensPerRemoteResource = 3'000;
    const PriceTable& p = ctx.model->prices;
    PriceTable worst = p;
    std::string_view body = ctx.http->body;
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
    std::int64_t perAnswer = ctx.request.maxOutputTokens >= 0
                                 ? ctx.request.maxOutputTokens
                                 : ctx.routing->config->settings.defaultMaxOutputTokens;
    perAnswer = std::min(perAnswer, kMaxHoldTokens);
    u.output = std::min(perAnswer * ctx.request.choices, kMaxHoldTokens);
    u.uncachedInput = std::min(u.uncachedInput, kMaxHoldTokens);
    return priceUsage(worst, u);
}

Result<Account> ProxyServiceImpl::authenticateCaller(const HttpRequest& http, ApiFormat format,
                                                     HttpResponse& refusal) {
    auto refuse = [&](HttpResponse r) {
        refusal = std::move(r);
        return Error{ErrorCode::InvalidArgument, "refused"};
    };
    const ProxySettings& settings = routing()->config->settings;
    for (const auto& [k, v] : http.headers) {
        if (v.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos)
            return refuse(apiError(format, 400, "header " + k + " contains a control character"));
    }
    std::string key = clientKey(http);
    if (key.empty())
        return refuse(apiError(format, 401,
                               "missing API key (Authorization: Bearer KEY or x-api-key)",
                               "invalid_api_key"));
    AuthOutcome auth = ledger_->authenticate(key);
    if (auth.status == AuthStatus::LedgerUnavailable) {
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "authenticate"}}));
        if (settings.ledgerFailureMode == LedgerFailureMode::FailOpen) {
            std::lock_guard lock(authCacheMutex_);
            auto it = authCache_.find(key);
            if (it != authCache_.end()) {
                auth.status = AuthStatus::Authorized;
                auth.account = it->second;
            }
        }
    }
    switch (auth.status) {
    case AuthStatus::Authorized:
        break;
    case AuthStatus::KeyInvalid:
        return refuse(apiError(format, 401, "invalid API key", "invalid_api_key"));
    case AuthStatus::KeyRevoked:
        return refuse(apiError(format, 401, "this API key has been revoked", "invalid_api_key"));
    case AuthStatus::KeyExpired:
        return refuse(apiError(format, 401, "this API key has expired", "invalid_api_key"));
    case AuthStatus::MigrationRequired:
        return refuse(apiError(format, 403, "account migration required", "migration_required"));
    case AuthStatus::LedgerUnavailable:
        return refuse(apiError(format, 503, "billing is temporarily unavailable; retry later",
                               "ledger_unavailable"));
    }
    if (settings.ledgerFailureMode == LedgerFailureMode::FailOpen) {
        std::lock_guard lock(authCacheMutex_);
        if (authCache_.size() < 100'000)
            authCache_[key] = auth.account;
    }
    return auth.account;
}

Admission ProxyServiceImpl::admit(const HttpRequest& head) {
    Admission out;
    auto format = billedRouteFormat(head.path);
    bool lookup = !responseIdInPath(head.path).empty();
    if (head.path == kCountTokensPath)
        format = ApiFormat::Anthropic;
    else if (lookup)
        format = ApiFormat::Responses;
    if (!format)
        return out; // served (or refused) by handle()
    auto refuse = [&](HttpResponse r) {
        metrics_.add(
            Metrics::series("trollproxy_requests_total",
                            {{"route", lookup ? std::string("/v1/responses/{id}") : head.path},
                             {"status", std::to_string(r.status)}}));
        out.refusal = std::move(r);
        return out;
    };
    if (lookup ? head.method != "GET" && head.method != "DELETE" : head.method != "POST")
        return refuse(apiError(*format, 405, lookup ? "use GET or DELETE" : "use POST"));
    const std::int64_t maxBody = routing()->config->settings.maxBodyBytes;
    std::string length = header(head, "content-length");
    if (!length.empty()) {
        bool digits = length.size() <= 18 && std::all_of(length.begin(), length.end(), [](char c) {
                          return c >= '0' && c <= '9';
                      });
        if (!digits)
            return refuse(apiError(*format, 400, "invalid Content-Length"));
        if (std::stoll(length) > maxBody)
            return refuse(apiError(
                *format, 413, "request body is larger than " + std::to_string(maxBody) + " bytes"));
    }
    HttpResponse refusal;
    auto account = authenticateCaller(head, *format, refusal);
    if (!account)
        return refuse(std::move(refusal));
    out.account = std::make_shared<const Account>(std::move(*account));
    return out;
}

HttpResponse ProxyServiceImpl::serveCompletion(const HttpRequest& http, ApiFormat format,
                                               const std::string& route) {
    RequestContext ctx;
    ctx.http = &http;
    ctx.routing = routing();
    ctx.format = format;
    ctx.route = route;
    ctx.requestId = newRequestId();
    ctx.start = std::chrono::steady_clock::now();
    ctx.promptBytes = static_cast<std::int64_t>(http.body.size());
    const Config& cfg = *ctx.routing->config;
    const ProxySettings& settings = cfg.settings;

    if (static_cast<std::int64_t>(http.body.size()) > settings.maxBodyBytes)
        return apiError(format, 413,
                        "request body is larger than " + std::to_string(settings.maxBodyBytes) +
                            " bytes");
    if (http.admitted) {
        ctx.account = *http.admitted;
    } else {
        HttpResponse refusal;
        auto account = authenticateCaller(http, format, refusal);
        if (!account)
            return refusal;
        ctx.account = std::move(*account);
    }
    const std::string& key = ctx.account.keyId;

    // Rate limit.
    RateDecision rate = ctx.routing->rateLimiter->check(key, steadyMs());
    if (!rate.allowed) {
        HttpResponse r = apiError(format, 429, "rate limit exceeded: " + std::to_string(rate.limit) +
                                                   " requests per minute", "rate_limit_exceeded");
        r.headers.emplace_back("Retry-After", std::to_string(rate.retryAfterSeconds));
        r.headers.emplace_back("X-RateLimit-Limit", std::to_string(rate.limit));
        r.headers.emplace_back("X-RateLimit-Remaining", "0");
        r.headers.emplace_back("X-RateLimit-Reset", std::to_string(rate.resetSeconds));
        return r;
    }

    // Read the request.
    auto parsed = parseClientRequest(format, http.body);
    if (!parsed)
        return apiError(format, 400, parsed.error().message);
    ctx.request = std::move(*parsed);
    ctx.model = cfg.findModel(ctx.request.model);
    if (!ctx.model)
        return apiError(format, 404, "model \"" + ctx.request.model + "\" does not exist", "model_not_found");
    if (format == ApiFormat::Responses) {
        if (!hasEndpoint(*ctx.routing, ApiFormat::Responses))
            return apiError(format, 404,
                            "this proxy serves no /v1/responses: its config has no endpoint whose "
                            "base_url ends in "
                            "/responses",
                            "responses_endpoint_missing");
        // A user continues only responses this user created through the proxy.
        if (!ctx.request.previousResponseId.empty()) {
            auto owner = ledger_->responseOwner(ctx.request.previousResponseId);
            if (!owner && owner.error().code != ErrorCode::NotFound)
                return apiError(format, 503, "billing is temporarily unavailable; retry later",
                                "ledger_unavailable");
            if (!owner || *owner != ctx.account.userId)
                return apiError(format, 404,
                                "Previous response with id '" + ctx.request.previousResponseId +
                                    "' not found.",
                                "previous_response_not_found");
        }
    }

    // Hold the estimated maximum cost before anything reaches the upstream.
    ctx.holdAmount = holdEstimate(ctx);
    // With an output limit the hold bounds the whole cost, except when the
    // request continues a stored response: its input is not in the body.
    ctx.holdBounds = ctx.request.maxOutputTokens >= 0 && ctx.request.previousResponseId.empty();
    HoldRequest hold{ctx.requestId, ctx.account.userId, ctx.model->pool, ctx.holdAmount,
                     wallMs() + settings.holdTtlSeconds * 1000};
    switch (ledger_->reserve(hold)) {
    case ReserveStatus::Reserved:
        ctx.held = true;
        break;
    case ReserveStatus::InsufficientCredits: {
        HttpResponse r = apiError(format, 402,
                                  std::string("insufficient credits in the ") + poolName(ctx.model->pool) +
                                      " balance for this request (needs up to " + hold.amount.toString() + " USD)",
                                  "insufficient_credits");
        finishLog(ctx, 402, nullptr, nullptr);
        return r;
    }
    case ReserveStatus::LedgerUnavailable:
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "reserve"}}));
        if (settings.ledgerFailureMode == LedgerFailureMode::FailClosed)
            return apiError(format, 503, "billing is temporarily unavailable; retry later", "ledger_unavailable");
        break; // fail_open: serve now, the charge is journalled
    }
    HttpResponse r = forward(ctx);
    r.headers.emplace_back("X-RateLimit-Limit", std::to_string(rate.limit));
    r.headers.emplace_back("X-RateLimit-Remaining", std::to_string(rate.remaining));
    r.headers.emplace_back("X-RateLimit-Reset", std::to_string(rate.resetSeconds));
    r.headers.emplace_back("x-request-id", ctx.requestId);
    return r;
}

void ProxyServiceImpl::releaseHold(RequestContext& ctx) {
    if (!ctx.held)
        return;
    if (!ledger_->release(ctx.requestId)) {
        // The sweep returns it once it expires.
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "release"}}));
    }
    ctx.held = false;
}

Billed ProxyServiceImpl::bill(RequestContext& ctx, const Usage& usage, int status) {
    Billed billed;
    // The client's own output limit bounds what the upstream was allowed to
    // produce: output beyond n × the limit is not believed. (The input part of
    // the hold is an estimate from the body's size; images by URL, earlier
    // responses and the upstream's own prompts can legitimately exceed it.)
    Usage priced = usage;
    if (ctx.holdBounds) {
        std::int64_t limit = std::min<std::int64_t>(ctx.request.maxOutputTokens, 1'000'000'000) *
                             ctx.request.choices;
        if (priced.output > limit) {
            priced.output = limit;
            billed.capped = true;
        }
    }
    billed.cost = priceUsage(ctx.model->prices, priced);
    // A hold sized from the client's own limit is what the user agreed to pay
    // at most: a usage priced above it (an upstream reporting absurd input) is
    // charged the hold.
    if (ctx.holdBounds && billed.cost.nanos > ctx.holdAmount.nanos) {
        billed.cost = ctx.holdAmount;
        billed.capped = true;
    }
    billed.usage = priced;
    const Money cost = billed.cost;
    Charge ch;
    ch.requestId = ctx.requestId;
    ch.userId = ctx.account.userId;
    ch.keyId = ctx.account.keyId;
    ch.model = ctx.model->id;
    ch.pool = ctx.model->pool;
    ch.usage = priced;
    ch.cost = cost;
    ch.statusCode = status;
    ch.latencyMs = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::steady_clock::now() - ctx.start)
                       .count();
    ch.success = status >= 200 && status < 300;
    ch.createdAtMs = wallMs();
    ch.responseId = ctx.responseId;
    SettleOutcome out = ledger_->settle(ch);
    ctx.held = false;
    std::string pool = poolName(ctx.model->pool);
    billed.charged = cost;
    if (out.status == SettleStatus::LedgerUnavailable) {
        metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "settle"}}));
        if (auto j = journal_.append(ch); !j) {
            metrics_.add("trollproxy_unrecorded_charges_total");
            std::fprintf(stderr, "{\"level\":\"critical\",\"msg\":\"charge not recorded\",\"request_id\":\"%s\",\"cost\":\"%s\",\"error\":%s}\n",
                         ctx.requestId.c_str(), cost.toString().c_str(), jsonQuote(j.error().message).c_str());
            return billed;
        }
        metrics_.add("trollproxy_journalled_charges_total");
    } else if (out.status == SettleStatus::Settled) {
        billed.charged = out.charged;
        billed.shortfall = out.shortfall;
    }
    billed.recorded = true;
    if (out.shortfall.nanos > 0)
        metrics_.add(Metrics::series("trollproxy_shortfall_usd_total", {{"pool", pool}}), out.shortfall.toUsdDouble());
    const std::string& model = ctx.model->id;
    metrics_.add(Metrics::series("trollproxy_cost_usd_total", {{"model", model}, {"pool", pool}}), cost.toUsdDouble());
    for (auto [kind, n] : {std::pair{"input", priced.uncachedInput},
                           {"output", priced.output},
                           {"cache_write", priced.cacheWrite},
                           {"cache_read", priced.cacheRead}})
        metrics_.add(Metrics::series("trollproxy_tokens_total", {{"model", model}, {"pool", pool}, {"kind", kind}}),
                     static_cast<double>(n));
    return billed;
}

void ProxyServiceImpl::finishLog(const RequestContext& ctx, int status, const Usage* usage,
                                 const Billed* billed, std::string_view note) {
    double latency = std::chrono::duration<double>(std::chrono::steady_clock::now() - ctx.start).count();
    std::string line = "{\"ts\":" + std::to_string(wallMs()) + ",\"request_id\":\"" + ctx.requestId +
                       "\",\"user\":" + jsonQuote(ctx.account.userId) + ",\"model\":" +
                       jsonQuote(ctx.model ? ctx.model->id : ctx.request.model) + ",\"route\":\"" + ctx.route +
                       "\",\"status\":" + std::to_string(status);
    if (usage) {
        line += ",\"input\":" + std::to_string(usage->uncachedInput) + ",\"output\":" +
                std::to_string(usage->output) + ",\"cache_write\":" + std::to_string(usage->cacheWrite) +
                ",\"cache_read\":" + std::to_string(usage->cacheRead) +
                ",\"estimated\":" + (usage->estimated ? "true" : "false");
    }
    line += ",\"cost\":\"" + (billed ? billed->charged : Money{}).toString() + "\"";
    if (billed && billed->shortfall.nanos > 0)
        line += ",\"shortfall\":\"" + billed->shortfall.toString() + "\"";
    line += ",\"pool\":\"" + std::string(ctx.model ? poolName(ctx.model->pool) : "") +
            "\",\"latency_ms\":" + std::to_string(static_cast<std::int64_t>(latency * 1000));
    if (!note.empty())
        line += ",\"note\":" + jsonQuote(note);
    line += "}\n";
    std::fputs(line.c_str(), stderr);
}

bool ProxyServiceImpl::shuttingDownPastGrace() const {
    std::int64_t d = shutdownDeadlineMs_.load();
    return d != 0 && steadyMs() >= d;
}

void ProxyServiceImpl::tick() {
    bool up = ledger_->ping();
    ready_ = up;
    metrics_.set("trollproxy_ledger_up", up ? 1 : 0);
    if (!up)
        return;
    std::int64_t now = wallMs();
    if (now - lastSweepMs_ >= 10'000) {
        lastSweepMs_ = now;
        if (auto swept = ledger_->sweepExpiredHolds(now); swept && *swept > 0)
            metrics_.add("trollproxy_holds_expired_total", static_cast<double>(*swept));
    }
    if (journal_.pendingCount() > 0) {
        if (auto rep = journal_.replay(*ledger_); rep) {
            metrics_.add("trollproxy_journal_replayed_total", static_cast<double>(rep->applied));
        }
    }
    metrics_.set("trollproxy_journal_pending", static_cast<double>(journal_.pendingCount()));
    auto r = routing();
    std::int64_t nowSteady = steadyMs();
    for (const auto& ep : r->endpoints) {
        for (std::size_t i = 0; i < ep.keys->size(); ++i) {
            auto st = ep.keys->state(i, nowSteady);
            for (auto [name, s] : {std::pair{"active", KeyPool::State::Active},
                                   {"cooling_down", KeyPool::State::CoolingDown},
                                   {"set_aside", KeyPool::State::SetAside}})
                metrics_.set(Metrics::series("trollproxy_upstream_key_state",
                                             {{"endpoint", ep.endpoint.name}, {"key", std::to_string(i)}, {"state", name}}),
                             st == s ? 1 : 0);
        }
    }
}

void ProxyServiceImpl::start() {
    std::lock_guard lock(lifeMutex_);
    if (ticker_.joinable() || stopping_)
        return;
    ticker_ = std::thread([this] {
        std::unique_lock lock(lifeMutex_);
        while (!lifeWake_.wait_for(lock, std::chrono::seconds(1), [this] { return stopping_; })) {
            lock.unlock();
            tick();
            lock.lock();
        }
    });
}

void ProxyServiceImpl::drain(std::int64_t graceMs) {
    shutdownDeadlineMs_ = steadyMs() + std::max<std::int64_t>(graceMs, 1);
}

void ProxyServiceImpl::stop() {
    {
        std::lock_guard lock(lifeMutex_);
        if (stopping_)
            return;
        stopping_ = true;
    }
    lifeWake_.notify_all();
    if (ticker_.joinable())
        ticker_.join();
    if (journal_.pendingCount() > 0)
        (void)journal_.replay(*ledger_);
}

ProxyServiceImpl::~ProxyServiceImpl() {
    stop();
}

} // namespace trollproxy::internal

namespace trollproxy {

Result<std::unique_ptr<ProxyService>> ProxyService::create(Config config, ServiceParts parts) {
    const ProxySettings& settings = config.settings;
    if (!parts.ledger) {
        std::string uri = parts.ledgerUri.empty() ? defaultLedgerUri() : parts.ledgerUri;
        auto ledger = openLedger(uri, LedgerOptions{settings.ledgerTimeoutMs, ""});
        if (!ledger)
            return Error{ledger.error().code, "ledger: " + ledger.error().message};
        parts.ledger = std::move(*ledger);
    }
    if (!parts.upstream)
        parts.upstream = makeCurlUpstream(UpstreamSettings{
            settings.connectTimeoutMs, settings.firstByteTimeoutMs, settings.idleTimeoutMs});
    auto routing = internal::ProxyServiceImpl::buildRouting(std::move(config), parts.keys, {});
    if (!routing)
        return routing.error();
    return std::unique_ptr<ProxyService>(new internal::ProxyServiceImpl(
        *routing, std::move(parts.ledger), std::move(parts.upstream), parts.keys));
}

Result<std::unique_ptr<ProxyService>> ProxyService::create(Config config,
                                                           std::unique_ptr<CreditLedger> ledger,
                                                           std::unique_ptr<Upstream> upstream,
                                                           const KeySource& keys) {
    ServiceParts parts;
    parts.ledger = std::move(ledger);
    parts.upstream = std::move(upstream);
    parts.keys = keys;
    return create(std::move(config), std::move(parts));
}

} // namespace trollproxy
