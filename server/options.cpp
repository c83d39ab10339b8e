// The trollproxy command line: its options, its usage text and --check-config.
#include "options.hpp"

#include <cstdio>
#include <utility>

#include "trollproxy/trollproxy.hpp"

namespace trollproxy::server {

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

CommandLine exitWith(int code) {
    CommandLine cl;
    cl.action = CommandLine::Action::Exit;
    cl.exitCode = code;
    return cl;
}

// Where the value of `flag` goes, noting the overrides; nullptr for an unknown flag.
std::string* valueOf(const std::string& flag, CommandLine& cl) {
    Options& o = cl.options;
    if (flag == "--check-config")
        return &cl.checkConfigPath;
    if (flag == "--config")
        return &o.configPath;
    if (flag == "--ledger")
        return &o.ledgerUri;
    if (flag == "--listen") {
        o.overrides.listen = true;
        return &o.listen;
    }
    if (flag == "--metrics-listen") {
        o.overrides.metricsListen = true;
        return &o.metricsListen;
    }
    if (flag == "--journal") {
        o.overrides.journal = true;
        return &o.journal;
    }
    return nullptr;
}

} // namespace

CommandLine parseCommandLine(int argc, char** argv) {
    CommandLine cl;
    for (int i = 1; i < argc; ++i) {
        std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") {
            std::fputs(kUsage, stdout);
            return exitWith(0);
        }
        std::string* value = valueOf(flag, cl);
        if (!value) {
            std::fprintf(stderr, "unknown argument %s\n%s", flag.c_str(), kUsage);
            return exitWith(2);
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "%s needs a value\n%s", flag.c_str(), kUsage);
            return exitWith(2);
        }
        *value = argv[++i];
        if (flag == "--check-config") {
            cl.action = CommandLine::Action::CheckConfig;
            return cl;
        }
    }
    if (cl.options.configPath.empty()) {
        std::fputs(kUsage, stderr);
        return exitWith(2);
    }
    return cl;
}

std::optional<Config> loadConfigReporting(const std::string& path) {
    auto cfg = loadConfigFile(path);
    if (!cfg) {
        std::fprintf(stderr, "%s\n", cfg.error().message.c_str());
        return std::nullopt;
    }
    for (const auto& w : cfg->warnings)
        std::fprintf(stderr, "warning: %s\n", w.c_str());
    return std::move(*cfg);
}

int checkConfig(const std::string& path) {
    std::optional<Config> cfg = loadConfigReporting(path);
    if (!cfg)
        return 1;
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

} // namespace trollproxy::server
