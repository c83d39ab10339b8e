// The private implementation of ProxyService, shared by its source files.
#pragma once

#include <atomic>
#include <chrono>
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
};

/// A config with its endpoints resolved; swapped as a whole on reload.
struct Routing {
    std::shared_ptr<const Config> config;
    std::vector<EndpointRoute> endpoints;
    std::shared_ptr<RateLimiter> rateLimiter;
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
    std::int64_t promptBytes = 0;
    std::chrono::steady_clock::time_point start;
};

class ProxyServiceImpl final : public ProxyService {
public:
    ProxyServiceImpl(std::shared_ptr<const Routing> routing, std::unique_ptr<CreditLedger> ledger,
                     std::unique_ptr<Upstream> upstream, KeySource keys);

    static Result<std::shared_ptr<const Routing>> buildRouting(
        Config config, const KeySource& keys,
        const std::map<std::string, std::shared_ptr<KeyPool>>& previous);

    HttpResponse handle(const HttpRequest& request) override;
    Result<void> reload(Config config) override;
    void tick() override;
    void beginShutdown(std::int64_t graceMs) override;
    void finish() override;
    std::shared_ptr<const Config> config() const override;

    // Used by forward.cpp.
    HttpResponse forward(RequestContext& ctx);
    HttpResponse wholeAnswer(RequestContext& ctx, UpstreamTransfer& transfer);
    HttpResponse streamAnswer(RequestContext& ctx, std::unique_ptr<UpstreamTransfer> transfer);
    void pumpStream(RequestContext& ctx, UpstreamTransfer& transfer, ResponseWriter& writer, bool isSse);
    void releaseHold(RequestContext& ctx);
    /// Prices and settles; journals when the ledger is down. False when the
    /// charge could not be recorded anywhere.
    bool bill(RequestContext& ctx, const Usage& usage, int status, Money& cost);
    void finishLog(const RequestContext& ctx, int status, const Usage* usage, Money cost,
                   const char* note = "");
    bool shuttingDownPastGrace() const;
    Metrics& metrics() { return metrics_; }
    Upstream& upstream() { return *upstream_; }

private:
    HttpResponse serveCompletion(const HttpRequest& request, ApiFormat format, const std::string& route);
    HttpResponse listModels() const;
    Money holdEstimate(const RequestContext& ctx) const;
    std::shared_ptr<const Routing> routing() const;

    mutable std::mutex routingMutex_;
    std::shared_ptr<const Routing> routing_;
    std::unique_ptr<CreditLedger> ledger_;
    std::unique_ptr<Upstream> upstream_;
    KeySource keySource_;
    Metrics metrics_;
    ChargeJournal journal_;
    std::atomic<bool> ready_{false};
    std::atomic<std::int64_t> shutdownDeadlineMs_{0};
    std::int64_t lastSweepMs_ = 0;
    std::mutex authCacheMutex_;
    std::unordered_map<std::string, Account> authCache_; // for fail_open only
};

std::int64_t wallMs();
std::int64_t steadyMs();

} // namespace trollproxy::internal
