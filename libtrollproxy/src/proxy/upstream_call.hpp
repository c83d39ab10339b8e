// UpstreamCall: sends one request upstream, rotating endpoints and keys until one answers.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "proxy/metrics.hpp"
#include "proxy/outcome.hpp"
#include "proxy/routing.hpp"
#include "trollproxy/clock.hpp"
#include "trollproxy/proxy.hpp"
#include "trollproxy/upstream.hpp"

namespace trollproxy::internal {

/// What to send and where.
struct UpstreamCall {
    const Routing* routing = nullptr;
    ApiFormat format = ApiFormat::OpenAI;
    const HeaderList* clientHeaders = nullptr; ///< the allowed ones are forwarded
    std::string upstreamName;                  ///< the model's upstream; "" for any
    std::string body;
    std::string method = "POST";
    /// When set, the URL is the endpoint's base_url (without its query) plus this.
    std::string urlSuffix;
    int maxAttempts = 8;
    /// The outcome when no endpoint serves the format and upstream.
    Outcome noEndpoint;
};

/// How a call ended: an answer to read, the upstream's refusal of the request
/// itself (to relay), or a failure of the proxy's own.
struct UpstreamAttempt {
    std::unique_ptr<UpstreamTransfer> transfer; ///< a 2xx answer, body unread
    std::optional<HttpResponse> relayed;        ///< the upstream refused the request
    Outcome failure;                            ///< neither of the above
};

/// Tries each usable key of each matching endpoint (at most maxAttempts):
/// connect failures, 5xx and refusals that concern the key move on; the rest
/// is the answer. Keys are cooled down and set aside as the refusals say.
UpstreamAttempt callUpstream(const UpstreamCall& call, Upstream& upstream, Metrics& metrics,
                             const Clock& clock);

/// The headers sent upstream: the client's allowed ones and the upstream key.
HeaderList upstreamHeaders(const HeaderList& client, ApiFormat format, const Config& config,
                           const std::string& key);

/// An upstream body with every key of the pool replaced by "[redacted]".
std::string redactKeys(std::string body, const KeyPool& keys);

/// What an upstream refusal says about the key that was used.
enum class KeyVerdict {
    Fine,        ///< the request itself was refused: relay it
    NextKey,     ///< try another key, leave this one in the pool
    RateLimited, ///< 429: the key cools down for its Retry-After; try another
    SetAside,    ///< the key is invalid or spent: out of the pool for a while
};
KeyVerdict keyVerdict(int status, const std::string& body);

/// The largest upstream answer read whole (or kept of a non-SSE stream for its usage).
inline constexpr std::size_t kMaxUpstreamBody = 64 * 1024 * 1024;

/// Reads the rest of a transfer into `body`, up to kMaxUpstreamBody.
Result<void> readAll(UpstreamTransfer& t, std::string& body);

/// The upstream's answer as the client gets it (content type kept).
HttpResponse relayAnswer(const UpstreamTransfer& t, int status, std::string body);

} // namespace trollproxy::internal
