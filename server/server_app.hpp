// ServerApp: the trollproxy process — the service, its public and metrics listeners, its signals.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <signal.h>

#include "options.hpp"
#include "trollproxy/proxy.hpp"

namespace trollproxy::server {

class GuardedServer;

/// Builds the ProxyService from the command line's options, serves it on the
/// public address and its /metrics on the metrics address, reloads the config
/// on SIGHUP and shuts down gracefully on SIGTERM or SIGINT.
class ServerApp {
public:
    explicit ServerApp(Options options);
    ~ServerApp();
    ServerApp(const ServerApp&) = delete;
    ServerApp& operator=(const ServerApp&) = delete;

    /// Serves until a stop signal; returns the exit code (1 when it cannot
    /// start: the reason is printed).
    int run();

private:
    bool buildService();
    void resolveAddresses(const Config& cfg);
    void blockSignals();
    std::unique_ptr<GuardedServer> makePublicServer();
    bool listenPublic();
    void listenMetrics();
    /// The signal thread: reloads on SIGHUP until a stop signal drains the service.
    void handleSignals();
    void stopMetrics();

    const Options options_;
    Config started_; ///< as the file says: what later reloads are compared with
    std::string host_;
    int port_ = 0;
    std::string metricsListen_; ///< "": /metrics is not served
    sigset_t signals_{};
    int listenFd_ = -1;
    bool metricsOn_ = false;
    std::atomic<bool> signalled_{false};
    // Destroyed in reverse: the servers before the service they route to.
    std::unique_ptr<ProxyService> service_;
    std::unique_ptr<GuardedServer> public_;
    std::unique_ptr<GuardedServer> metrics_;
    std::thread metricsThread_;
    std::thread signalThread_;
};

} // namespace trollproxy::server
