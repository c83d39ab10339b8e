// ProxyService: the routes, admission, the shared parts, reload and the background work.
#include "proxy/proxy_service.hpp"

#include <cstdio>
#include <filesystem>
#include <optional>

#include "core/json_writer.hpp"
#include "proxy/free_routes.hpp"
#include "proxy/outcome.hpp"

namespace trollproxy::internal {

namespace {

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
constexpr std::string_view kLookupRoute = "/v1/responses/{id}";

// The id in /v1/responses/{id}, or "".
std::string_view responseIdInPath(std::string_view path) {
    if (path.substr(0, kResponsesPrefix.size()) != kResponsesPrefix)
        return {};
    std::string_view id = path.substr(kResponsesPrefix.size());
    return id.find('/') == std::string_view::npos ? id : std::string_view{};
}

// The format errors are answered in when the route does not say.
ApiFormat errorFormat(std::string_view path) {
    return path.rfind("/v1/messages", 0) == 0 ? ApiFormat::Anthropic : ApiFormat::OpenAI;
}

HttpResponse jsonResponse(int status, std::string body) {
    HttpResponse r;
    r.status = status;
    r.body = std::move(body);
    return r;
}

HttpResponse notAllowed(ApiFormat format, std::string message) {
    return toHttp(refuse(OutcomeKind::MethodNotAllowed, std::move(message)), format);
}

// This process's request ids: "req_" + a digest of its journal's absolute path
// (one journal per instance) + "_". The same after a restart, so the new
// process recognises the holds the old one left.
std::string requestIdPrefixFor(const std::string& journal) {
    std::error_code ec;
    std::string path = std::filesystem::absolute(journal, ec).lexically_normal().string();
    std::uint64_t h = 1469598103934665603ULL; // FNV-1a
    for (unsigned char c : path)
        h = (h ^ c) * 1099511628211ULL;
    char buf[16];
    std::snprintf(buf, sizeof buf, "%08llx", static_cast<unsigned long long>(h & 0xffffffffULL));
    return std::string("req_") + buf + "_";
}

void logInternalError(std::string_view what) {
    std::fprintf(stderr, "%s\n",
                 JsonWriter()
                     .beginObject()
                     .field("level", "error")
                     .field("msg", what)
                     .endObject()
                     .str()
                     .c_str());
}

} // namespace

ProxyServiceImpl::ProxyServiceImpl(JournalLock instance, std::shared_ptr<const Routing> routing,
                                   ServiceParts parts)
    : instance_(std::move(instance)), routing_(std::move(routing)),
      ledger_(std::move(parts.ledger)), upstream_(std::move(parts.upstream)),
      getenv_(parts.keys.getenv), clock_(parts.clock ? parts.clock : systemClock()),
      settlements_(routing_->config->journalFile(), *ledger_, metrics_, *clock_, parts.syncJournal),
      requestIdPrefix_(requestIdPrefixFor(routing_->config->journalFile())),
      slices_(*ledger_, metrics_, *clock_, requestIdPrefix_),
      auth_(*ledger_, metrics_, *clock_, &ready_),
      biller_(*ledger_, settlements_, slices_, metrics_, *clock_),
      parts_{*ledger_, slices_, doubtful_,           auth_,           biller_, *upstream_,
             metrics_, *clock_, shutdownDeadlineMs_, requestIdPrefix_} {
    // Charges a previous process left in the journal are settled first, then
    // the holds it left (it died mid-request) go back now, not after
    // hold_ttl_seconds. The ledger being down leaves them to the sweep.
    settlements_.start([this](const Charge& c) { slices_.settled(c.holdId); });
    if (auto n = ledger_->releaseHolds(requestIdPrefix_); n && *n > 0)
        metrics_.add("trollproxy_holds_released_at_start_total", static_cast<double>(*n));
    tick();
}

ProxyServiceImpl::~ProxyServiceImpl() {
    stop();
}

std::shared_ptr<const Routing> ProxyServiceImpl::routing() const {
    std::lock_guard lock(routingMutex_);
    return routing_;
}

Result<void> ProxyServiceImpl::reload(Config config) {
    auto next = buildRouting(std::move(config), getenv_, routing()->pools());
    if (!next)
        return next.error();
    slices_.setPolicy(slicePolicy((*next)->config->settings));
    std::lock_guard lock(routingMutex_);
    routing_ = *next;
    return {};
}

HttpResponse ProxyServiceImpl::handle(const HttpRequest& request) {
    const std::int64_t startNs = clock_->steadyNs();
    std::string route = request.path;
    HttpResponse resp;
    try {
        resp = dispatch(request, route);
    } catch (const std::exception& e) {
        logInternalError(e.what());
        resp = toHttp(refuse(OutcomeKind::Internal, "internal error"), errorFormat(request.path));
    }
    account(resp, route, errorFormat(request.path), startNs);
    return resp;
}

HttpResponse ProxyServiceImpl::dispatch(const HttpRequest& request, std::string& route) {
    const std::string& path = request.path;
    const std::string& method = request.method;
    if (auto format = billedRouteFormat(path)) {
        if (method != "POST")
            return notAllowed(*format, "use POST");
        return std::make_shared<Exchange>(parts_, routing(), request, *format, route)->run();
    }
    if (path == kCountTokensPath)
        return method == "POST" ? serveCountTokens(parts_, routing(), request)
                                : notAllowed(ApiFormat::Anthropic, "use POST");
    if (auto id = responseIdInPath(path); !id.empty()) {
        route = kLookupRoute;
        return method == "GET" || method == "DELETE"
                   ? serveResponseLookup(parts_, routing(), request, std::string(id))
                   : notAllowed(ApiFormat::Responses, "use GET or DELETE");
    }
    if (method == "GET" && path == "/v1/models")
        return listModels();
    if (method == "GET" && path == "/health")
        return jsonResponse(200, "{\"status\":\"ok\"}");
    if (method == "GET" && path == "/ready")
        return ready_ ? jsonResponse(200, "{\"status\":\"ready\"}")
                      : jsonResponse(503, "{\"status\":\"ledger unavailable\"}");
    route = "other";
    return toHttp(refuse(OutcomeKind::NoRoute, "no route for " + method + " " + path),
                  ApiFormat::OpenAI);
}

void ProxyServiceImpl::account(HttpResponse& resp, const std::string& route, ApiFormat format,
                               std::int64_t startNs) {
    (void)format;
    metrics_.add(Metrics::series("trollproxy_requests_total",
                                 {{"route", route}, {"status", std::to_string(resp.status)}}));
    auto observe = [this, route, startNs] {
        metrics_.observeLatency(route, static_cast<double>(clock_->steadyNs() - startNs) / 1e9);
    };
    if (!resp.stream) {
        observe();
        return;
    }
    // The stream runs after handle() returned: the same catch-all, and its
    // latency is observed when it ends.
    resp.stream = [inner = std::move(resp.stream), observe](ResponseWriter& w) {
        try {
            inner(w);
        } catch (const std::exception& e) {
            logInternalError(std::string("stream failed: ") + e.what());
        }
        observe();
    };
}

HttpResponse ProxyServiceImpl::listModels() const {
    auto cfg = config();
    JsonWriter w;
    w.beginObject().field("object", "list").key("data").beginArray();
    for (const auto& m : cfg->models) {
        w.beginObject()
            .field("id", m.id)
            .field("object", "model")
            .field("created", 1700000000)
            .field("owned_by", m.upstream.empty() ? std::string("trollproxy") : m.upstream)
            .endObject();
    }
    w.endArray().endObject();
    return jsonResponse(200, w.take());
}

Admission ProxyServiceImpl::admit(const HttpRequest& head) {
    Admission out;
    auto format = billedRouteFormat(head.path);
    const bool lookup = !responseIdInPath(head.path).empty();
    if (head.path == kCountTokensPath)
        format = ApiFormat::Anthropic;
    else if (lookup)
        format = ApiFormat::Responses;
    if (!format)
        return out; // served (or refused) by handle()
    auto refused = [&](const Outcome& o) {
        out.refusal = toHttp(o, *format);
        metrics_.add(Metrics::series("trollproxy_requests_total",
                                     {{"route", lookup ? std::string(kLookupRoute) : head.path},
                                      {"status", std::to_string(out.refusal->status)}}));
        return out;
    };
    if (lookup ? head.method != "GET" && head.method != "DELETE" : head.method != "POST")
        return refused(
            refuse(OutcomeKind::MethodNotAllowed, lookup ? "use GET or DELETE" : "use POST"));
    auto routes = routing();
    const std::int64_t maxBody = routes->config->settings.maxBodyBytes;
    std::string length = headerValue(head, "content-length");
    if (!length.empty()) {
        bool digits = length.size() <= 18 && std::all_of(length.begin(), length.end(), [](char c) {
                          return c >= '0' && c <= '9';
                      });
        if (!digits)
            return refused(refuse(OutcomeKind::BadRequest, "invalid Content-Length"));
        if (std::stoll(length) > maxBody)
            return refused(
                refuse(OutcomeKind::BodyTooLarge,
                       "request body is larger than " + std::to_string(maxBody) + " bytes"));
    }
    Account account;
    if (Outcome o = auth_.authenticate(head, authPolicy(routes->config->settings), account);
        !o.ok())
        return refused(o);
    out.account = std::make_shared<const Account>(std::move(account));
    return out;
}

void ProxyServiceImpl::tick() {
    bool up = ledger_->ping();
    ready_ = up;
    metrics_.set("trollproxy_ledger_up", up ? 1 : 0);
    if (!up)
        return;
    std::int64_t now = clock_->wallMs();
    if (now - lastSweepMs_ >= 10'000) {
        lastSweepMs_ = now;
        if (auto swept = ledger_->sweepExpiredHolds(now); swept && *swept > 0)
            metrics_.add("trollproxy_holds_expired_total", static_cast<double>(*swept));
    }
    metrics_.set("trollproxy_journal_pending", static_cast<double>(settlements_.depth()));
    slices_.tick(slicePolicy(routing()->config->settings));
    doubtful_.retry(*ledger_, metrics_, now);
    publishKeyStates(*routing());
}

void ProxyServiceImpl::publishKeyStates(const Routing& r) {
    const std::int64_t now = clock_->steadyMs();
    for (const auto& ep : r.endpoints) {
        for (std::size_t i = 0; i < ep.keys->size(); ++i) {
            auto st = ep.keys->state(i, now);
            for (auto [name, s] : {std::pair{"active", KeyPool::State::Active},
                                   {"cooling_down", KeyPool::State::CoolingDown},
                                   {"set_aside", KeyPool::State::SetAside}})
                metrics_.set(Metrics::series("trollproxy_upstream_key_state",
                                             {{"endpoint", ep.endpoint.name},
                                              {"key", std::to_string(i)},
                                              {"state", name}}),
                             st == s ? 1 : 0);
        }
    }
}

void ProxyServiceImpl::start() {
    std::lock_guard lock(lifeMutex_);
    if (ticker_.joinable() || stopping_)
        return;
    slices_.start(slicePolicy(routing()->config->settings));
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
    shutdownDeadlineMs_ = clock_->steadyMs() + std::max<std::int64_t>(graceMs, 1);
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
    // Every queued charge settled first, so that the slices it drew on can go back.
    settlements_.stop();
    slices_.stop();
}

} // namespace trollproxy::internal

namespace trollproxy {

Result<std::unique_ptr<ProxyService>> ProxyService::create(Config config, ServiceParts parts) {
    const ProxySettings& settings = config.settings;
    auto instance = internal::JournalLock::acquire(config.journalFile());
    if (!instance)
        return Error{instance.error().code,
                     instance.error().message + ": each instance needs its own journal_path"};
    if (!parts.ledger) {
        std::string uri = parts.ledgerUri.empty() ? defaultLedgerUri() : parts.ledgerUri;
        auto ledger = openLedger(uri, LedgerOptions{settings.ledgerTimeoutMs, ""});
        if (!ledger)
            return Error{ledger.error().code, "ledger: " + ledger.error().message};
        parts.ledger = std::move(*ledger);
        parts.syncJournal |= uri.find("synchronous=full") != std::string::npos;
    }
    if (!parts.upstream)
        parts.upstream = makeCurlUpstream(UpstreamSettings{
            settings.connectTimeoutMs, settings.firstByteTimeoutMs, settings.idleTimeoutMs});
    auto routing = internal::buildRouting(std::move(config), parts.keys.getenv, {});
    if (!routing)
        return routing.error();
    return std::unique_ptr<ProxyService>(
        new internal::ProxyServiceImpl(std::move(*instance), *routing, std::move(parts)));
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
