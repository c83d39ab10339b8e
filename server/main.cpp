// trollproxy: parses arguments, builds the library's objects and serves them over cpp-httplib.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include <signal.h>
#include <unistd.h>

#include <httplib.h>

#include "trollproxy/trollproxy.hpp"

using namespace trollproxy;

namespace {

const char kUsage[] =
    "usage: trollproxy --config FILE [--ledger URI] [--listen HOST:PORT] [--journal PATH]\n"
    "       trollproxy --check-config FILE\n"
    "  --ledger   sqlite:PATH or mongodb://... (default: $MONGODB_URI, else sqlite:trollproxy.db)\n"
    "  --listen   address to serve on (default 0.0.0.0 and the config's port; port 0 picks one)\n"
    "  --journal  file for charges the ledger could not take yet (default: the config's\n"
    "             trollproxy.journal_path, else trollproxy-PORT.journal)\n";

int checkConfig(const std::string& path) {
    auto cfg = loadConfigFile(path);
    if (!cfg) {
        std::fprintf(stderr, "%s\n", cfg.error().message.c_str());
        return 1;
    }
    for (const auto& w : cfg->warnings)
        std::fprintf(stderr, "warning: %s\n", w.c_str());
    for (const auto& m : cfg->models) {
        std::printf("%s upstream=%s pool=%s input=%s output=%s cache_write=%s cache_read=%s multiplier=%s\n",
                    m.id.c_str(), m.upstream.c_str(), poolName(m.pool), m.prices.input.toString().c_str(),
                    m.prices.output.toString().c_str(), m.prices.cacheWrite.toString().c_str(),
                    m.prices.cacheRead.toString().c_str(), m.prices.multiplier.toString().c_str());
    }
    std::printf("%s: ok, %zu models, %zu endpoints, port %d\n", cfg->sourceName.c_str(),
                cfg->models.size(), cfg->endpoints.size(), cfg->port);
    return 0;
}

// Adapts httplib's sink to the library's writer.
class SinkWriter final : public ResponseWriter {
public:
    explicit SinkWriter(httplib::DataSink& sink) : sink_(sink) {}
    bool write(std::string_view bytes) override {
        return sink_.is_writable() && sink_.write(bytes.data(), bytes.size());
    }

private:
    httplib::DataSink& sink_;
};

void serve(ProxyService& service, const httplib::Request& req, httplib::Response& res) {
    HttpRequest in;
    in.method = req.method;
    in.path = req.path;
    in.remoteAddr = req.remote_addr;
    in.body = req.body;
    for (const auto& [k, v] : req.headers) {
        // httplib adds the socket's addresses as pseudo headers.
        if (k != "REMOTE_ADDR" && k != "REMOTE_PORT" && k != "LOCAL_ADDR" && k != "LOCAL_PORT")
            in.headers.emplace_back(k, v);
    }
    HttpResponse out = service.handle(in);
    res.status = out.status;
    for (const auto& [k, v] : out.headers)
        res.set_header(k, v);
    if (!out.stream) {
        res.set_content(std::move(out.body), out.contentType);
        return;
    }
    res.set_chunked_content_provider(out.contentType,
                                     [fn = std::move(out.stream)](std::size_t, httplib::DataSink& sink) {
                                         SinkWriter writer(sink);
                                         fn(writer);
                                         sink.done();
                                         return true;
                                     });
}

} // namespace

int main(int argc, char** argv) {
    std::string configPath, ledgerUri, listen, journal;
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
            listen = next();
        else if (a == "--journal")
            journal = next();
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
    if (!journal.empty())
        cfg->settings.journalPath = journal;
    const ProxySettings settings = cfg->settings;
    std::string host = "0.0.0.0";
    int port = cfg->port;
    if (!listen.empty()) {
        auto colon = listen.rfind(':');
        host = colon == std::string::npos ? listen : listen.substr(0, colon);
        port = colon == std::string::npos ? cfg->port : std::atoi(listen.c_str() + colon + 1);
    }
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
    auto ledger = openLedger(ledgerUri, LedgerOptions{settings.ledgerTimeoutMs, ""});
    if (!ledger) {
        std::fprintf(stderr, "ledger: %s\n", ledger.error().message.c_str());
        return 1;
    }
    UpstreamSettings us{settings.connectTimeoutMs, settings.firstByteTimeoutMs, settings.idleTimeoutMs};
    auto service = ProxyService::create(std::move(*cfg), std::move(*ledger), makeCurlUpstream(us));
    if (!service) {
        std::fprintf(stderr, "%s\n", service.error().message.c_str());
        return 1;
    }
    ProxyService& svc = **service;


    httplib::Server svr;
    auto threads = static_cast<std::size_t>(settings.workerThreads);
    svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    svr.set_payload_max_length(static_cast<std::size_t>(settings.maxBodyBytes) + 1024 * 1024);
    svr.set_keep_alive_max_count(10'000);
    svr.set_tcp_nodelay(true); // behind nginx's keep-alive: no Nagle wait between header and body writes
    svr.set_write_timeout(60, 0);
    svr.set_read_timeout(60, 0);
    // A listen queue that takes bursts of connections (httplib 0.11 listens with a backlog of 5).
    int listenFd = -1;
    svr.set_socket_options([&listenFd](socket_t s) {
        httplib::default_socket_options(s);
        listenFd = s;
    });
    auto handler = [&svc](const httplib::Request& req, httplib::Response& res) { serve(svc, req, res); };
    for (const char* pattern : {"/.*"}) {
        svr.Post(pattern, handler);
        svr.Get(pattern, handler);
        svr.Put(pattern, handler);
        svr.Delete(pattern, handler);
    }

    if (port == 0) {
        port = svr.bind_to_any_port(host);
    } else if (!svr.bind_to_port(host, port)) {
        port = -1;
    }
    if (port < 0) {
        std::fprintf(stderr, "cannot listen on %s\n", listen.empty() ? host.c_str() : listen.c_str());
        return 1;
    }
    if (listenFd >= 0)
        ::listen(listenFd, SOMAXCONN);
    std::printf("trollproxy listening on %s:%d\n", host.c_str(), port);
    std::fflush(stdout);

    std::atomic<bool> stopping{false};
    std::atomic<bool> signalled{false};
    std::thread ticker([&] {
        while (!stopping) {
            for (int i = 0; i < 10 && !stopping; ++i)
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            if (!stopping)
                svc.tick();
        }
    });
    std::thread signalThread([&] {
        for (;;) {
            int sig = 0;
            sigwait(&signals, &sig);
            if (sig == SIGHUP) {
                auto next = loadConfigFile(configPath);
                Result<void> applied = next ? svc.reload(std::move(*next)) : Result<void>(next.error());
                std::fprintf(stderr, "{\"level\":\"%s\",\"msg\":\"config reload %s\"}\n",
                             applied ? "info" : "error", applied ? "applied" : applied.error().message.c_str());
                continue;
            }
            signalled = true;
            std::fprintf(stderr, "{\"level\":\"info\",\"msg\":\"shutting down\"}\n");
            svc.beginShutdown(settings.shutdownGraceSeconds * 1000);
            svr.stop();
            return;
        }
    });
    svr.listen_after_bind();
    // listen_after_bind returns once stop() ran and the workers finished.
    if (!signalled)
        kill(getpid(), SIGTERM); // it failed on its own: wake the signal thread
    signalThread.join();
    stopping = true;
    ticker.join();
    svc.finish();
    return 0;
}
