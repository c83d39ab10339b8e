// ProxyService: the request path — authenticate, hold, forward, stream, settle.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "trollproxy/clock.hpp"
#include "trollproxy/config.hpp"
#include "trollproxy/ledger.hpp"
#include "trollproxy/upstream.hpp"

namespace trollproxy {

/// An HTTP request as the server received it. Header names in any case.
struct HttpRequest {
    std::string method;
    std::string path;
    HeaderList headers;
    std::string body;
    std::string remoteAddr;
    /// The caller admit() authenticated from this request's head; when set,
    /// handle() does not look the key up again.
    std::shared_ptr<const Account> admitted;
};

/// Where a streamed answer goes.
class ResponseWriter {
public:
    virtual ~ResponseWriter() = default;
    /// Sends bytes to the client now. False when the client has gone away.
    virtual bool write(std::string_view bytes) = 0;
};

/// An answer: either a whole body, or a stream function that writes it.
struct HttpResponse {
    int status = 200;
    HeaderList headers;
    std::string contentType = "application/json";
    std::string body;
    /// When set, the body is streamed by calling this once, on the thread
    /// that called handle().
    std::function<void(ResponseWriter&)> stream;
};

/// What admit() decided from a request's line and headers alone.
struct Admission {
    /// Set when the request is refused before its body is read. The server
    /// sends it and closes the connection (the unread body follows).
    std::optional<HttpResponse> refusal;
    /// The authenticated caller of a billed route; pass it on in
    /// HttpRequest::admitted.
    std::shared_ptr<const Account> account;
};

/// Where upstream keys come from: TROLLPROXY_UPSTREAM_KEYS, an endpoint's
/// `api_key_env` variable, or the settings' key file. Keys are never logged.
struct KeySource {
    /// Reads an environment variable; replaceable for tests.
    std::function<std::string(const std::string&)> getenv;
};

/// What the service is built from besides its config; every part has a default.
struct ServiceParts {
    /// The ledger; default: openLedger(ledgerUri) with the config's ledger_timeout_ms.
    std::unique_ptr<CreditLedger> ledger;
    /// Used when `ledger` is not given: sqlite:PATH or mongodb://...; "" is
    /// defaultLedgerUri().
    std::string ledgerUri;
    /// The upstream client; default: libcurl with the config's timeouts.
    std::unique_ptr<Upstream> upstream;
    KeySource keys;
    /// Default: systemClock().
    std::shared_ptr<const Clock> clock;
    /// fsync each journal-first charge before its answer ends (one fsync for
    /// the charges written meanwhile). Default: when ledgerUri asks for full
    /// durability (sqlite:...?synchronous=full).
    bool syncJournal = false;
};

/// The proxy's whole request path. Thread-safe: handle() runs on many threads.
///
/// Life: create() → start() → handle()… → drain() → (the embedder stops
/// calling handle()) → stop(). The destructor calls stop().
class ProxyService {
public:
    /// Builds the service. Fails when an endpoint has no upstream key or the
    /// ledger cannot be opened.
    static Result<std::unique_ptr<ProxyService>> create(Config config, ServiceParts parts);
    /// The same with the parts given one by one.
    static Result<std::unique_ptr<ProxyService>> create(Config config,
                                                        std::unique_ptr<CreditLedger> ledger,
                                                        std::unique_ptr<Upstream> upstream,
                                                        const KeySource& keys = {});
    virtual ~ProxyService() = default;

    /// Starts the background work on a thread of its own: readiness checks,
    /// the hold sweep and the replay of journalled charges, about once a second.
    virtual void start() = 0;

    /// Starts shutting down: streams still running after `graceMs` are cut
    /// and settled. Returns at once.
    virtual void drain(std::int64_t graceMs) = 0;

    /// Stops the background work and replays the journal one last time. Call
    /// once no handle() runs any more. Idempotent.
    virtual void stop() = 0;

    /// Checks what the head of a request shows (route, method, header values,
    /// declared Content-Length, the API key) before its body is read, so that
    /// unauthenticated or oversized bodies cost nothing. `head.body` is empty.
    virtual Admission admit(const HttpRequest& head) = 0;

    /// Serves one request (any route).
    virtual HttpResponse handle(const HttpRequest& request) = 0;

    /// The service's metrics in Prometheus text format, for a listener of
    /// the embedder's choosing (not served by handle()).
    virtual std::string metricsText() const = 0;

    /// Swaps in a new config; requests in flight keep the old one.
    virtual Result<void> reload(Config config) = 0;

    /// The config in force.
    virtual std::shared_ptr<const Config> config() const = 0;
};

} // namespace trollproxy
