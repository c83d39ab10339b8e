// SIGHUP: the config file read again, and the changed settings a running server cannot apply.
#include "reload.hpp"

#include <utility>

#include "log.hpp"

namespace trollproxy::server {

Unapplied unappliedChanges(const Config& started, const Config& next, const Overrides& o) {
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

void reloadConfig(ProxyService& service, const std::string& configPath, const Config& started,
                  const Overrides& overrides) {
    auto next = loadConfigFile(configPath);
    if (!next) {
        logLine("error", "config reload " + next.error().message);
        return;
    }
    Unapplied left = unappliedChanges(started, *next, overrides);
    if (Result<void> applied = service.reload(std::move(*next)); !applied) {
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

} // namespace trollproxy::server
