// Token usage reported by an upstream, in one canonical shape for both API formats.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "trollproxy/result.hpp"

namespace trollproxy {

/// The API formats trollproxy speaks: OpenAI chat completions, Anthropic
/// messages, and OpenAI's Responses API (errors in OpenAI's shape).
enum class ApiFormat { OpenAI, Anthropic, Responses };

/// Token counts for one request. Input kinds are disjoint: uncachedInput excludes
/// both cache writes and cache reads.
struct Usage {
    std::int64_t uncachedInput = 0;
    std::int64_t cacheWrite = 0;
    std::int64_t cacheRead = 0;
    std::int64_t output = 0;
    /// True when counted by the proxy instead of reported by the upstream.
    bool estimated = false;
    /// The part of cacheWrite written with a 1-hour TTL (Anthropic's
    /// cache_creation.ephemeral_1h_input_tokens); the rest is 5-minute.
    std::int64_t cacheWrite1h = 0;

    std::int64_t totalInput() const { return uncachedInput + cacheWrite + cacheRead; }
    friend bool operator==(const Usage&, const Usage&) = default;
};

/// Reads the usage of a complete (non-streaming) response body.
/// NotFound when the body carries no usage; ParseError on malformed JSON;
/// InvalidArgument when the usage is present but not believable: a count that
/// is not a non-negative integer up to 10^9, a required count missing, or
/// cached tokens exceeding the prompt. Such usage must be treated as missing.
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

    /// True once valid usage has been seen.
    bool reported() const { return reported_; }
    /// True once any usage event was not believable (see usageFromBody); the
    /// stream's usage must then be treated as missing.
    bool invalid() const { return !invalidReason_.empty(); }
    const std::string& invalidReason() const { return invalidReason_; }
    const Usage& usage() const { return usage_; }
    /// Characters of generated text seen so far (content, reasoning, refusals,
    /// tool arguments), for estimating output when usage is missing.
    std::int64_t textChars() const { return textChars_; }
    /// Characters of generated text after the last usage event: usage followed
    /// by more content was not final.
    std::int64_t charsAfterUsage() const { return textChars_ - charsAtUsage_; }
    /// Responses API: the id of the response being streamed ("" until seen).
    const std::string& responseId() const { return responseId_; }

private:
    friend struct StreamUsageFormats; // the per-format event readers
    void noteUsage(const Usage& usage);
    void markInvalid(std::string why);

    ApiFormat format_;
    Usage usage_;
    bool reported_ = false;
    std::string invalidReason_;
    std::int64_t textChars_ = 0;
    std::int64_t charsAtUsage_ = 0;
    std::string responseId_;
};

/// Responses API: the `id` of a whole answer, or "".
std::string responseIdFromBody(std::string_view body);

} // namespace trollproxy
