// The proxy's configuration: the goproxy JSON schema, read unchanged and validated.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "trollproxy/money.hpp"
#include "trollproxy/pool.hpp"
#include "trollproxy/result.hpp"

namespace trollproxy {

/// USD per million tokens, exact.
struct PriceTable {
    Money input;
    Money output;
    Money cacheWrite;
    Money cacheRead;
    Factor multiplier;
    /// 1-hour cache writes (`cache_write_1h_price_per_mtok`); the config
    /// loader defaults it to 2 × input.
    std::optional<Money> cacheWrite1h = std::nullopt;
};

/// One entry of `models[]`.
struct ModelConfig {
    std::string name;
    std::string id;
    std::vector<std::string> aliases;
    std::string type;
    std::string upstream;
    std::string upstreamModelId;
    std::string billingUpstream;
    Pool pool = Pool::CreditsNew;
    PriceTable prices;
    std::optional<Money> batchInputPrice;
    std::optional<Money> batchOutputPrice;
    std::string reasoning;
    std::optional<std::int64_t> thinkingBudget;
};

/// One entry of `endpoints[]`. `upstream` and `api_key_env` are trollproxy's
/// optional additions.
struct EndpointConfig {
    std::string name;
    std::string baseUrl;
    std::string upstream;
    std::string apiKeyEnv;
};

/// The client API an endpoint serves, read from the ending of its base_url's
/// path: /chat/completions, /messages or /responses.
enum class EndpointApi { None, ChatCompletions, Messages, Responses };
EndpointApi endpointApi(const EndpointConfig& endpoint);

/// What to do with new requests while the ledger cannot be reached.
enum class LedgerFailureMode { FailClosed, FailOpen };

/// When a served request's charge reaches the ledger. Synchronous: settled
/// before the answer is sent. JournalFirst: a charge its hold covers is written
/// to the journal (one write) and settled by a background flusher in batches,
/// so the ledger round trip is off the request path; the balance a user sees
/// then changes a few milliseconds after the answer.
enum class Settlement { Synchronous, JournalFirst };

/// trollproxy's own settings: the optional top-level "trollproxy" object.
struct ProxySettings {
    std::int64_t rateLimitPerMinute = 600;
    LedgerFailureMode ledgerFailureMode = LedgerFailureMode::FailClosed;
    Settlement settlement = Settlement::Synchronous;
    std::int64_t connectTimeoutMs = 10'000;
    std::int64_t firstByteTimeoutMs = 300'000;
    std::int64_t idleTimeoutMs = 300'000;
    std::int64_t workerThreads = 256;
    std::int64_t maxBodyBytes = 50 * 1024 * 1024;
    std::int64_t holdTtlSeconds = 900;
    std::int64_t shutdownGraceSeconds = 30;
    std::int64_t defaultMaxOutputTokens = 8192;
    std::int64_t ledgerTimeoutMs = 3000; ///< bound on one ledger call (read when the ledger opens)
    /// How long an authenticated key is trusted without asking the ledger
    /// again: a revoked key is refused at most this long after (0: every request asks).
    std::int64_t authCacheMs = 1000;
    /// Budget slices: the most one process holds for one (user, pool), taken
    /// from the ledger in one call and spent by requests from memory (zero:
    /// off, every request holds its own estimate in the ledger).
    Money sliceMax;
    /// A slice takes at most this share (per mille) of the pool's free balance.
    std::int64_t sliceFreePermille = 500;
    /// A slice nobody used for this long goes back to the balance.
    std::int64_t sliceIdleSeconds = 10;
    /// Where /metrics is served, "HOST:PORT" (port 0: any free port); "" when off.
    std::string metricsListen = "127.0.0.1:9464";
    std::string journalPath;
    std::string keyFile;
    /// Client headers forwarded upstream beyond the built-in allow-list
    /// (lower case; a trailing '*' matches a prefix).
    std::vector<std::string> forwardHeaders;
};

/// A loaded, validated configuration.
struct Config {
    std::string sourceName; ///< file name used in messages
    int port = 8000;
    std::vector<EndpointConfig> endpoints;
    std::vector<ModelConfig> models;
    std::string systemPrompt;
    std::string userAgent;
    ProxySettings settings;
    std::vector<std::string> warnings; ///< unknown keys and similar

    /// Finds a model by id or alias; nullptr when none matches.
    const ModelConfig* findModel(std::string_view idOrAlias) const;

    /// The client routes this config serves, from its endpoints' base_url
    /// endings (/chat/completions, /messages, /responses), e.g.
    /// "POST /v1/messages". /v1/models, /health and /ready are always served.
    std::vector<std::string> routes() const;
    /// Where charges the ledger could not take wait: settings.journalPath, else
    /// "trollproxy-PORT.journal" (the server and trollproxy-admin agree on it).
    std::string journalFile() const;
};

/// Parses and validates config text. On failure the error message lists every
/// problem, one per line, as `NAME: json.path: reason`.
Result<Config> parseConfig(std::string_view json, std::string_view sourceName);

/// Reads a file and parses it; the file's base name names it in messages.
Result<Config> loadConfigFile(const std::string& path);

} // namespace trollproxy
