// The private implementation of ProxyService, shared by its source files.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "trollproxy/journal.hpp"
#include "trollproxy/proxy.hpp"
#include "proxy/key_pool.hpp"
#include "proxy/metrics.hpp"
#include "proxy/rate_limiter.hpp"
#include "proxy/request_body.hpp"

namespace trollproxy::internal {

/// One endpoint ready to use: its format and its keys.
struct EndpointRoute {
    EndpointConfig endpoint;
    ApiFormat format;
    std::shared_ptr<KeyPool> keys;
    /// Where the keys came from ("TROLLPROXY_UPSTREAM_KEYS", an api_key_env
    /// variable, or "file:PATH"): a reload keeps the pool's state per source.
    std::string keySource;
};

/// A config with its endpoints resolved; swapped as a whole on reload.
struct Routing {
    std::shared_ptr<const Config> config;
    std::vector<EndpointRoute> endpoints;
    std::shared_ptr<RateLimiter> rateLimiter;
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

/// Everything one request carries through the path.
struct RequestContext {
    const HttpRequest* http = nullptr;
    std::shared_ptr<const Routing> routing;
    std::string requestId;
    ApiFormat format = ApiFormat::OpenAI;
    std::string route;
    const ModelConfig* model = nullptr;
    Account account;
    ClientRequest request;
    bool held = false;
    /// The hold's amount, and whether it bounds the charge (the client set an
    /// output limit and the input is all in the body).
    Money holdAmount;
    bool holdBounds = false;
    std::int64_t promptBytes = 0;
    std::string responseId; ///< Responses API: the id the upstream gave the answer
    std::chrono::steady_clock::time_point start;
};

class ProxyServiceImpl final : public ProxyService {
public:
    ProxyServiceImpl(std::shared_ptr<const Routing> routing, std::unique_ptr<CreditLedger> ledger,
                     std::unique_ptr<Upstream> upstream, KeySource keys);

    static Result<std::shared_ptr<const Routing>> buildRouting(
        Config config, const KeySource& keys,
        const std::map<std::string, std::shared_ptr<KeyPool>>& previous);

    Admission admit(const HttpRequest& head) override;
    HttpResponse handle(const HttpRequest& request) override;
    std::string metricsText() const override { return metrics_.render(); }
    Result<void> reload(Config config) override;
    ~ProxyServiceImpl() override;
    void start() override;
    void drain(std::int64_t graceMs) override;
    void stop() override;
    /// One round of background work (readiness, sweep, journal replay).
    void tick();
    std::shared_ptr<const Config> config() const override;

    // Used by forward.cpp.
    HttpResponse forward(RequestContext& ctx);
    HttpResponse wholeAnswer(RequestContext& ctx, UpstreamTransfer& transfer);
    HttpResponse streamAnswer(RequestContext& ctx, std::unique_ptr<UpstreamTransfer> transfer);
    void pumpStream(RequestContext& ctx, UpstreamTransfer& transfer, ResponseWriter& writer, bool isSse);
    void releaseHold(RequestContext& ctx);
    /// Prices and settles; journals when the ledger is down.
    Billed bill(RequestContext& ctx, const Usage& usage, int status);
    void finishLog(const RequestContext& ctx, int status, const Usage* usage, const Billed* billed,
                   std::string_view note = "");
    bool shuttingDownPastGrace() const;
    Metrics& metrics() { return metrics_; }
    Upstream& upstream() { return *upstream_; }

private:
    HttpResponse serveCompletion(const HttpRequest& request, ApiFormat format, const std::string& route);
    /// Anthropic's count_tokens: authenticated, rate limited, forwarded, never charged.
    HttpResponse serveCountTokens(const HttpRequest& request);
    /// GET or DELETE /v1/responses/{id}: only for the user who created it; never charged.
    HttpResponse serveResponseLookup(const HttpRequest& request, const std::string& id);
    /// The context of a request to a route that is never charged.
    RequestContext freeContext(const HttpRequest& http, ApiFormat format, std::string route) const;
    /// The caller and rate limit of a free route; a refusal, or nothing when it may go on.
    std::optional<HttpResponse> admitFree(RequestContext& ctx);
    /// Sends a request that is never charged to the endpoints of `format`
    /// (`urlSuffix` appended to their base_url), rotating keys as forward() does,
    /// and relays the answer.
    HttpResponse relayFree(RequestContext& ctx, ApiFormat format, const std::string& upstreamName,
                           const std::string& urlSuffix, const std::string& method,
                           const std::string& body);
    /// The caller of a billed route, or the refusal to send.
    Result<Account> authenticateCaller(const HttpRequest& request, ApiFormat format,
                                       HttpResponse& refusal);
    HttpResponse listModels() const;
    Money holdEstimate(const RequestContext& ctx) const;
    std::shared_ptr<const Routing> routing() const;

    mutable std::mutex routingMutex_;
    std::shared_ptr<const Routing> routing_;
    std::unique_ptr<CreditLedger> ledger_;
    std::unique_ptr<Upstream> upstream_;
    KeySource keySource_;
    mutable Metrics metrics_;
    ChargeJournal journal_;
    std::atomic<bool> ready_{false};
    std::atomic<std::int64_t> shutdownDeadlineMs_{0};
    std::int64_t lastSweepMs_ = 0;
    std::mutex authCacheMutex_;
    std::unordered_map<std::string, Account> authCache_; // for fail_open only
    std::mutex lifeMutex_;
    std::condition_variable lifeWake_;
    bool stopping_ = false;
    std::thread ticker_;
};

std::int64_t wallMs();
std::int64_t steadyMs();
bool hasEndpoint(const Routing& routing, ApiFormat format);

/// The headers sent upstream: the client's allowed ones and the upstream key.
HeaderList upstreamHeaders(const RequestContext& ctx, const std::string& key);
/// An upstream body with every key of the pool replaced by "[redacted]".
std::string redactKeys(std::string body, const KeyPool& keys);

/// What an upstream refusal says about the key that was used.
enum class KeyVerdict {
    Fine,        ///< the request itself was refused: relay it
    NextKey,     ///< try another key, leave this one in the pool
    RateLimited, ///< 429: the key cools down for its Retry-After; try another
    SetAside,    ///< the key is invalid or spent: out of the pool for a while
};
KeyVerdict keyVerdict(int status, const std::string& body);

/// Applies an upstream refusal of key `k` to its pool: a rate-limited key cools
/// down for its Retry-After (returned in `waitMs`), a spent one is set aside —
/// at most one per request (`setAsideOne` carries that across attempts).
KeyVerdict applyRefusal(KeyPool& keys, std::size_t k, const UpstreamTransfer& t,
                        const std::string& body, bool& setAsideOne, std::int64_t& waitMs);
/// Reads the rest of a transfer into `body`, up to a bound.
Result<void> readAll(UpstreamTransfer& t, std::string& body);

} // namespace trollproxy::internal
