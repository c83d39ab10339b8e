// trollproxy: parses arguments, builds the library's objects and serves them over cpp-httplib.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_server.hpp"
#include "routes.hpp"
#include "trollproxy/trollproxy.hpp"

using namespace trollproxy;

namespace {

const char kUsage[] =
    "usage: trollproxy --config FILE [--ledger URI] [--listen HOST:PORT] [--metrics-listen "
    "HOST:PORT]\n"
    "                  [--journal PATH]\n"
    "       trollproxy --check-config FILE\n"
    "  --ledger          sqlite:PATH or mongodb://... (default: $MONGODB_URI, else "
    "sqlite:trollproxy.db)\n"
    "  --listen          address to serve on (default 0.0.0.0 and the config's port; port 0 picks "
    "one)\n"
    "  --metrics-listen  address for GET /metrics, or off (default: the config's\n"
    "                    trollproxy.metrics_listen, else 127.0.0.1:9464)\n"
    "  --journal         file for charges the ledger could not take yet (default: the config's\n"
    "                    trollproxy.journal_path, else trollproxy-PORT.journal)\n";

int checkConfig(const std::string& path) {
    auto cfg = loadConfigFile(path);
    if (!cfg) {
        std::fprintf(stderr, "%s\n", cfg.error().message.c_str());
        return 1;
    }
    for (const auto& w : cfg->warnings)
        std::fprintf(stderr, "warning: %s\n", w.c_str());
    for (const auto& m : cfg->models) {
        std::printf("%s upstream=%s pool=%s input=%s output=%s cache_write=%s cache_read=%s "
                    "multiplier=%s\n",
                    m.id.c_str(), m.upstream.c_str(), poolName(m.pool),
                    m.prices.input.toString().c_str(), m.prices.output.toString().c_str(),
                    m.prices.cacheWrite.toString().c_str(), m.prices.cacheRead.toString().c_str(),
                    m.prices.multiplier.toString().c_str());
    }
    for (const auto& route : cfg->routes())
        std::printf("route %s\n", route.c_str());
    std::printf("%s: ok, %zu models, %zu endpoints, port %d\n", cfg->sourceName.c_str(),
                cfg->models.size(), cfg->endpoints.size(), cfg->port);
    return 0;
}

std::string jsonEscape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\')
            out += '\\';
        if (c == '\n')
            out += "\\n";
        else if (static_cast<unsigned char>(c) >= 0x20)
            out += c;
    }
    return out;
}

void logLine(const char* level, const std::string& msg) {
    std::fprintf(stderr, "{\"level\":\"%s\",\"msg\":\"%s\"}\n", level, jsonEscape(msg).c_str());
}

/// "HOST:PORT" split; a bare host keeps `port`. IPv6 hosts may be bracketed.
void splitAddress(const std::string& addr, std::string& host, int& port) {
    auto colon = addr.rfind(':');
    host = colon == std::string::npos ? addr : addr.substr(0, colon);
    if (colon != std::string::npos)
        port = std::atoi(addr.c_str() + colon + 1);
    if (host.size() > 1 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
}

/// What the command line fixed, so that the config's value does not apply.
struct Overrides {
    bool listen = false;
    bool metricsListen = false;
    bool journal = false;
};

/// What a reload changed that it cannot apply.
struct Unapplied {
    std::vector<std::string> needRestart; ///< read once at start
    std::vector<std::string> overridden;  ///< set by a command-line option instead
};

Unapplied unapplied(const Config& started, const Config& next, const Overrides& o) {
    Unapplied out;
    auto changed = [&out](const char* name, const std::string& was, const std::string& now,
                          const char* overriddenBy = nullptr) {
        if (was == now)
            return;
        std::string what = std::string(name) + " changed " + was + " -> " + now;
        if (overriddenBy)
            out.overridden.push_back(what + "; not used: " + overriddenBy + " sets it");
        else
            out.needRestart.push_back(what + "; restart to apply");
    };
    auto quoted = [](const std::string& s) { return "\"" + s + "\""; };
    const ProxySettings& a = started.settings;
    const ProxySettings& b = next.settings;
    changed("port", std::to_string(started.port), std::to_string(next.port),
            o.listen ? "--listen" : nullptr);
    changed("metrics_listen", quoted(a.metricsListen), quoted(b.metricsListen),
            o.metricsListen ? "--metrics-listen" : nullptr);
    changed("journal_path", quoted(a.journalPath), quoted(b.journalPath),
            o.journal ? "--journal" : nullptr);
    changed("worker_threads", std::to_string(a.workerThreads), std::to_string(b.workerThreads));
    changed("connect_timeout_ms", std::to_string(a.connectTimeoutMs),
            std::to_string(b.connectTimeoutMs));
    changed("first_byte_timeout_ms", std::to_string(a.firstByteTimeoutMs),
            std::to_string(b.firstByteTimeoutMs));
    changed("idle_timeout_ms", std::to_string(a.idleTimeoutMs), std::to_string(b.idleTimeoutMs));
    changed("ledger_timeout_ms", std::to_string(a.ledgerTimeoutMs),
            std::to_string(b.ledgerTimeoutMs));
    // A lower limit applies at once (admit() checks it); httplib's cap stays at the old one.
    if (b.maxBodyBytes > a.maxBodyBytes)
        changed("max_body_bytes", std::to_string(a.maxBodyBytes), std::to_string(b.maxBodyBytes));
    return out;
}

// SIGHUP: applies what it can and names each changed setting it cannot apply.
void reload(ProxyService& svc, const std::string& configPath, const Config& started,
            const Overrides& o) {
    auto next = loadConfigFile(configPath);
    if (!next) {
        logLine("error", "config reload " + next.error().message);
        return;
    }
    Unapplied left = unapplied(started, *next, o);
    if (Result<void> applied = svc.reload(std::move(*next)); !applied) {
        logLine("error", "config reload " + applied.error().message);
        return;
    }
    for (const auto& r : left.needRestart)
        logLine("warning", "config reload: " + r);
    for (const auto& r : left.overridden)
        logLine("warning", "config reload: " + r);
    logLine("info", left.needRestart.empty() ? "config reload applied"
                                             : "config reload applied, except " +
                                                   std::to_string(left.needRestart.size()) +
                                                   " setting(s) that need a restart");
}

} // namespace

int main(int argc, char** argv) {
    std::string configPath, ledgerUri, listen, metricsListen, journal;
    Overrides overrides;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n%s", a.c_str(), kUsage);
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--check-config")
            return checkConfig(next());
        if (a == "--config")
            configPath = next();
        else if (a == "--ledger")
            ledgerUri = next();
        else if (a == "--listen")
            listen = next(), overrides.listen = true;
        else if (a == "--metrics-listen")
            metricsListen = next(), overrides.metricsListen = true;
        else if (a == "--journal")
            journal = next(), overrides.journal = true;
        else if (a == "--help" || a == "-h") {
            std::fputs(kUsage, stdout);
            return 0;
        } else {
            std::fprintf(stderr, "unknown argument %s\n%s", a.c_str(), kUsage);
            return 2;
        }
    }
    if (configPath.empty()) {
        std::fputs(kUsage, stderr);
        return 2;
    }
    auto cfg = loadConfigFile(configPath);
    if (!cfg) {
        std::fprintf(stderr, "%s\n", cfg.error().message.c_str());
        return 1;
    }
    for (const auto& w : cfg->warnings)
        std::fprintf(stderr, "warning: %s\n", w.c_str());
    const Config started = *cfg; // as the file says: what later reloads are compared with
    const ProxySettings& settings = started.settings;
    if (!journal.empty())
        cfg->settings.journalPath = journal;
    if (!overrides.metricsListen)
        metricsListen = settings.metricsListen;
    else if (metricsListen == "off")
        metricsListen.clear();
    std::string host = "0.0.0.0";
    int port = cfg->port;
    if (!listen.empty())
        splitAddress(listen, host, port);
    // Signals are taken by one thread with sigwait; block them everywhere else,
    // before any thread (the ledger's, the driver's) starts and inherits the mask.
    sigset_t signals;
    sigemptyset(&signals);
    for (int s : {SIGTERM, SIGINT, SIGHUP})
        sigaddset(&signals, s);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);
    if (ledgerUri.empty())
        ledgerUri = defaultLedgerUri();
    ServiceParts parts;
    parts.ledgerUri = ledgerUri;
    auto service = ProxyService::create(std::move(*cfg), std::move(parts));
    if (!service) {
        std::fprintf(stderr, "%s\n", service.error().message.c_str());
        return 1;
    }
    ProxyService& svc = **service;

    // Request heads are collected by one thread within these limits; the
    // workers only run requests whose head has arrived (server/http_server.hpp).
    // Worker threads start as requests need them and exit after idling, so
    // a proxy sized for thousands of streams costs little while quiet.
    server::GuardedServer svr(server::HeadLimits{},
                              {.maxThreads = static_cast<std::size_t>(settings.workerThreads)});
    svr.set_payload_max_length(static_cast<std::size_t>(settings.maxBodyBytes) + 1024 * 1024);
    svr.set_keep_alive_max_count(10'000);
    svr.set_tcp_nodelay(
        true); // behind nginx's keep-alive: no Nagle wait between header and body writes
    svr.set_write_timeout(60, 0);
    svr.set_read_timeout(60, 0);
    // A listen queue that takes bursts of connections (httplib 0.11 listens with a backlog of 5).
    int listenFd = -1;
    svr.set_socket_options([&listenFd](socket_t s) {
        httplib::default_socket_options(s);
        listenFd = s;
    });
    server::routeProxy(svr, svc);

    if (port == 0) {
        port = svr.bind_to_any_port(host);
    } else if (!svr.bind_to_port(host, port)) {
        port = -1;
    }
    if (port < 0) {
        std::fprintf(stderr, "cannot listen on %s\n",
                     listen.empty() ? host.c_str() : listen.c_str());
        return 1;
    }
    if (listenFd >= 0)
        ::listen(listenFd, SOMAXCONN);
    std::printf("trollproxy listening on %s:%d\n", host.c_str(), port);

    // /metrics on its own listener: the public port does not serve it.
    server::GuardedServer metricsSvr(server::HeadLimits{}, {.maxThreads = 2});
    // SO_REUSEADDR without httplib's SO_REUSEPORT: a port taken by another
    // process is an error here, not a port shared with it.
    metricsSvr.set_socket_options([](socket_t s) {
        int yes = 1;
        ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    server::routeMetrics(metricsSvr, svc);
    bool metricsOn = false;
    if (!metricsListen.empty()) {
        std::string mhost = "127.0.0.1";
        int mport = -1;
        splitAddress(metricsListen, mhost, mport);
        if (mport == 0)
            mport = metricsSvr.bind_to_any_port(mhost);
        else if (mport < 0 || !metricsSvr.bind_to_port(mhost, mport))
            mport = -1;
        if (mport < 0) {
            // Billing goes on without metrics; the scrape failing shows it.
            logLine("error",
                    "metrics: cannot listen on " + metricsListen + "; /metrics is not served");
        } else {
            metricsOn = true;
            std::printf("metrics listening on %s:%d\n", mhost.c_str(), mport);
        }
    }
    std::fflush(stdout);
    std::thread metricsThread;
    if (metricsOn)
        metricsThread = std::thread([&metricsSvr] { metricsSvr.listen_after_bind(); });

    std::atomic<bool> signalled{false};
    svc.start();
    std::thread signalThread([&] {
        for (;;) {
            int sig = 0;
            sigwait(&signals, &sig);
            if (sig == SIGHUP) {
                reload(svc, configPath, started, overrides);
                continue;
            }
            signalled = true;
            logLine("info", "shutting down");
            // stop() does nothing before listen_after_bind() has started.
            for (int i = 0; i < 1000 && !svr.is_running(); ++i)
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            svc.drain(svc.config()->settings.shutdownGraceSeconds * 1000);
            svr.stop();
            return;
        }
    });
    svr.listen_after_bind();
    // listen_after_bind returns once stop() ran and the workers finished.
    if (!signalled)
        kill(getpid(), SIGTERM); // it failed on its own: wake the signal thread
    signalThread.join();
    if (metricsOn) {
        while (!metricsSvr.is_running())
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        metricsSvr.stop();
        metricsThread.join();
    }
    svc.stop();
    return 0;
}
