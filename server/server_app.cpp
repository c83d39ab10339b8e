// ServerApp: the trollproxy process — the service, its public and metrics listeners, its signals.
#include "server_app.hpp"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include <sys/socket.h>
#include <unistd.h>

#include "http_server.hpp"
#include "log.hpp"
#include "reload.hpp"
#include "routes.hpp"

namespace trollproxy::server {

namespace {

/// "HOST:PORT" split; a bare host keeps `port`. IPv6 hosts may be bracketed.
void splitAddress(const std::string& addr, std::string& host, int& port) {
    auto colon = addr.rfind(':');
    host = colon == std::string::npos ? addr : addr.substr(0, colon);
    if (colon != std::string::npos)
        port = std::atoi(addr.c_str() + colon + 1);
    if (host.size() > 1 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
}

/// Binds `server` to host:port (port 0 picks one); the port, or -1.
int bindServer(GuardedServer& server, const std::string& host, int port) {
    if (port == 0)
        return server.bind_to_any_port(host);
    return port > 0 && server.bind_to_port(host, port) ? port : -1;
}

} // namespace

ServerApp::ServerApp(Options options) : options_(std::move(options)) {}

ServerApp::~ServerApp() = default;

int ServerApp::run() {
    if (!buildService() || !listenPublic())
        return 1;
    listenMetrics();
    std::fflush(stdout);
    if (metricsOn_)
        metricsThread_ = std::thread([this] { metrics_->listen_after_bind(); });
    service_->start();
    signalThread_ = std::thread([this] { handleSignals(); });
    public_->listen_after_bind();
    // listen_after_bind returns once stop() ran and the workers finished.
    if (!signalled_)
        kill(getpid(), SIGTERM); // it failed on its own: wake the signal thread
    signalThread_.join();
    stopMetrics();
    service_->stop();
    return 0;
}

bool ServerApp::buildService() {
    std::optional<Config> cfg = loadConfigReporting(options_.configPath);
    if (!cfg)
        return false;
    started_ = *cfg;
    if (!options_.journal.empty())
        cfg->settings.journalPath = options_.journal;
    resolveAddresses(*cfg);
    blockSignals();
    ServiceParts parts;
    parts.ledgerUri = options_.ledgerUri.empty() ? defaultLedgerUri() : options_.ledgerUri;
    auto service = ProxyService::create(std::move(*cfg), std::move(parts));
    if (!service) {
        std::fprintf(stderr, "%s\n", service.error().message.c_str());
        return false;
    }
    service_ = std::move(*service);
    return true;
}

void ServerApp::resolveAddresses(const Config& cfg) {
    host_ = "0.0.0.0";
    port_ = cfg.port;
    if (!options_.listen.empty())
        splitAddress(options_.listen, host_, port_);
    if (!options_.overrides.metricsListen)
        metricsListen_ = cfg.settings.metricsListen;
    else if (options_.metricsListen != "off")
        metricsListen_ = options_.metricsListen;
}

// Signals are taken by one thread with sigwait; block them everywhere else,
// before any thread (the ledger's, the driver's) starts and inherits the mask.
void ServerApp::blockSignals() {
    sigemptyset(&signals_);
    for (int s : {SIGTERM, SIGINT, SIGHUP})
        sigaddset(&signals_, s);
    pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
    std::signal(SIGPIPE, SIG_IGN);
}

std::unique_ptr<GuardedServer> ServerApp::makePublicServer() {
    const ProxySettings& settings = started_.settings;
    // Request heads are collected by one thread within these limits; the
    // workers only run requests whose head has arrived (server/http_server.hpp).
    // Worker threads start as requests need them and exit after idling, so
    // a proxy sized for thousands of streams costs little while quiet.
    auto svr = std::make_unique<GuardedServer>(
        HeadLimits{},
        ElasticPool::Options{.maxThreads = static_cast<std::size_t>(settings.workerThreads)});
    svr->set_payload_max_length(static_cast<std::size_t>(settings.maxBodyBytes) + 1024 * 1024);
    svr->set_keep_alive_max_count(10'000);
    // Behind nginx's keep-alive: no Nagle wait between header and body writes.
    svr->set_tcp_nodelay(true);
    svr->set_write_timeout(60, 0);
    svr->set_read_timeout(60, 0);
    // A listen queue that takes bursts of connections (httplib 0.11 listens with a backlog of 5).
    svr->set_socket_options([this](socket_t s) {
        httplib::default_socket_options(s);
        listenFd_ = s;
    });
    routeProxy(*svr, *service_);
    return svr;
}

bool ServerApp::listenPublic() {
    public_ = makePublicServer();
    port_ = bindServer(*public_, host_, port_);
    if (port_ < 0) {
        std::fprintf(stderr, "cannot listen on %s\n",
                     options_.listen.empty() ? host_.c_str() : options_.listen.c_str());
        return false;
    }
    if (listenFd_ >= 0)
        ::listen(listenFd_, SOMAXCONN);
    std::printf("trollproxy listening on %s:%d\n", host_.c_str(), port_);
    return true;
}

// /metrics on its own listener: the public port does not serve it.
void ServerApp::listenMetrics() {
    metrics_ = std::make_unique<GuardedServer>(HeadLimits{}, ElasticPool::Options{.maxThreads = 2});
    // SO_REUSEADDR without httplib's SO_REUSEPORT: a port taken by another
    // process is an error here, not a port shared with it.
    metrics_->set_socket_options([](socket_t s) {
        int yes = 1;
        ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    routeMetrics(*metrics_, *service_);
    if (metricsListen_.empty())
        return;
    std::string host = "127.0.0.1";
    int port = -1;
    splitAddress(metricsListen_, host, port);
    port = bindServer(*metrics_, host, port);
    if (port < 0) {
        // Billing goes on without metrics; the scrape failing shows it.
        logLine("error",
                "metrics: cannot listen on " + metricsListen_ + "; /metrics is not served");
        return;
    }
    metricsOn_ = true;
    std::printf("metrics listening on %s:%d\n", host.c_str(), port);
}

void ServerApp::handleSignals() {
    for (;;) {
        int sig = 0;
        sigwait(&signals_, &sig);
        if (sig == SIGHUP) {
            reloadConfig(*service_, options_.configPath, started_, options_.overrides);
            continue;
        }
        signalled_ = true;
        logLine("info", "shutting down");
        // stop() does nothing before listen_after_bind() has started.
        for (int i = 0; i < 1000 && !public_->is_running(); ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        service_->drain(service_->config()->settings.shutdownGraceSeconds * 1000);
        public_->stop();
        return;
    }
}

void ServerApp::stopMetrics() {
    if (!metricsOn_)
        return;
    while (!metrics_->is_running())
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    metrics_->stop();
    metricsThread_.join();
}

} // namespace trollproxy::server
