// ProxyServiceImpl: the service's shared parts, its routes and its background work.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "ledger/journal_lock.hpp"
#include "proxy/billing.hpp"
#include "proxy/caller_auth.hpp"
#include "proxy/exchange.hpp"
#include "proxy/metrics.hpp"
#include "proxy/routing.hpp"
#include "proxy/settlement_queue.hpp"
#include "proxy/slice_book.hpp"
#include "trollproxy/proxy.hpp"

namespace trollproxy::internal {

/// Owns what every request shares (ledger, upstream, journal, metrics, the
/// routing in force) and hands each billed request to an Exchange.
class ProxyServiceImpl final : public ProxyService {
public:
    ProxyServiceImpl(JournalLock instance, std::shared_ptr<const Routing> routing,
                     ServiceParts parts);
    ~ProxyServiceImpl() override;

    void start() override;
    void drain(std::int64_t graceMs) override;
    void stop() override;
    Admission admit(const HttpRequest& head) override;
    HttpResponse handle(const HttpRequest& request) override;
    std::string metricsText() const override { return metrics_.render(); }
    Result<void> reload(Config config) override;
    std::shared_ptr<const Config> config() const override { return routing()->config; }

private:
    /// Picks the route's handler; every answer but a stream is final here.
    HttpResponse dispatch(const HttpRequest& request, std::string& route);
    HttpResponse listModels() const;
    std::shared_ptr<const Routing> routing() const;
    /// Counts the request and observes its latency (the one place), and
    /// gives a stream the same catch-all and accounting when it ends.
    void account(HttpResponse& response, const std::string& route, ApiFormat format,
                 std::int64_t startMs);
    /// One round of background work (readiness, sweep, journal replay, key states).
    void tick();
    void publishKeyStates(const Routing& routing);

    JournalLock instance_; // first: held before the journal is touched
    mutable std::mutex routingMutex_;
    std::shared_ptr<const Routing> routing_;
    std::unique_ptr<CreditLedger> ledger_;
    std::unique_ptr<Upstream> upstream_;
    Getenv getenv_;
    std::shared_ptr<const Clock> clock_;
    mutable Metrics metrics_;
    SettlementQueue settlements_;
    const std::string requestIdPrefix_;
    SliceBook slices_;
    DoubtfulHolds doubtful_;
    CallerAuth auth_;
    Biller biller_;
    std::atomic<std::int64_t> shutdownDeadlineMs_{0};
    ExchangeParts parts_;
    std::atomic<bool> ready_{false};
    std::int64_t lastSweepMs_ = 0;

    std::mutex lifeMutex_;
    std::condition_variable lifeWake_;
    bool stopping_ = false;
    std::thread ticker_;
};

} // namespace trollproxy::internal
