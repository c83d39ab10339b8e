// Token usage reported by an upstream, in one canonical shape for both API formats.
#pragma once

#include <cstdint>
#include <string_view>

#include "trollproxy/result.hpp"

namespace trollproxy {

/// The two API formats trollproxy speaks.
enum class ApiFormat { OpenAI, Anthropic };

/// Token counts for one request. Input kinds are disjoint: uncachedInput excludes
/// both cache writes and cache reads.
struct Usage {
    std::int64_t uncachedInput = 0;
    std::int64_t cacheWrite = 0;
    std::int64_t cacheRead = 0;
    std::int64_t output = 0;
    /// True when counted by the proxy instead of reported by the upstream.
    bool estimated = false;

    std::int64_t totalInput() const { return uncachedInput + cacheWrite + cacheRead; }
    friend bool operator==(const Usage&, const Usage&) = default;
};

/// Reads the usage of a complete (non-streaming) response body.
/// NotFound when the body carries no usage; ParseError on malformed JSON.
Result<Usage> usageFromBody(ApiFormat format, std::string_view body);

/// Follows the usage in a stream, one SSE event at a time. Anthropic counts are
/// cumulative (the latest value wins, never summed); OpenAI sends usage in the
/// last chunk only.
class StreamUsage {
public:
    explicit StreamUsage(ApiFormat format) : format_(format) {}

    /// Feeds one event's data (the JSON text after "data:"). Returns true when
    /// the event carried usage. "[DONE]" and non-JSON data are ignored.
    bool onEvent(std::string_view eventName, std::string_view data);

    /// True once any usage has been seen.
    bool reported() const { return reported_; }
    const Usage& usage() const { return usage_; }
    /// Characters of generated text seen so far, for estimating output when a
    /// stream ends without usage.
    std::int64_t textChars() const { return textChars_; }

private:
    ApiFormat format_;
    Usage usage_;
    bool reported_ = false;
    std::int64_t textChars_ = 0;
};

} // namespace trollproxy
