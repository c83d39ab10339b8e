// Usage extraction from OpenAI, LiteLLM and Anthropic answers, whole or streamed.
//
// OpenAI: prompt_tokens includes the cache reads (prompt_tokens_details.cached_tokens).
// LiteLLM (OpenHands) also reports cache_creation_input_tokens and
// cache_read_input_tokens, and its prompt_tokens includes BOTH (its Anthropic
// transformation adds them to input_tokens), so uncached = prompt_tokens − cache
// reads − cache writes there. cached_tokens and cache_read_input_tokens name the
// same tokens and are counted once.
// Anthropic: input_tokens excludes both cache counters; stream counts are cumulative.
#include "trollproxy/usage.hpp"

#include <algorithm>

#include <simdjson.h>

namespace trollproxy {

namespace {

namespace dom = simdjson::dom;

// Larger counts are not believed (as integers or as doubles alike), so sums and
// differences of counts cannot overflow.
constexpr std::int64_t kMaxCount = 9'000'000'000'000'000;

// A non-negative integer field, when present.
bool count(dom::element obj, const char* key, std::int64_t& out) {
    dom::element v;
    if (obj[key].get(v) || v.is_null())
        return false;
    std::int64_t n = 0;
    if (v.get_int64().get(n)) {
        double d = 0;
        if (v.get_double().get(d) || d < 0 || d > 9e15)
            return false;
        n = static_cast<std::int64_t>(d);
    }
    if (n > kMaxCount)
        return false;
    out = std::max<std::int64_t>(n, 0);
    return true;
}

// Applies the fields an Anthropic usage object carries; absent ones keep their value.
void applyAnthropic(dom::element usage, Usage& u) {
    count(usage, "input_tokens", u.uncachedInput);
    count(usage, "cache_creation_input_tokens", u.cacheWrite);
    count(usage, "cache_read_input_tokens", u.cacheRead);
    count(usage, "output_tokens", u.output);
}

Usage fromOpenAI(dom::element usage) {
    Usage u;
    std::int64_t prompt = 0, cached = 0, litellmRead = 0, litellmWrite = 0;
    count(usage, "prompt_tokens", prompt);
    count(usage, "completion_tokens", u.output);
    dom::element details;
    if (!usage["prompt_tokens_details"].get(details) && details.is_object())
        count(details, "cached_tokens", cached);
    bool hasRead = count(usage, "cache_read_input_tokens", litellmRead);
    bool hasWrite = count(usage, "cache_creation_input_tokens", litellmWrite);
    u.cacheRead = hasRead ? std::max(litellmRead, cached) : cached;
    u.cacheWrite = hasWrite ? litellmWrite : 0;
    // Never below zero; if a server's prompt_tokens left the writes out, the
    // clamp avoids charging the same tokens twice at the cheaper rate only.
    u.uncachedInput = std::max<std::int64_t>(prompt - u.cacheRead - u.cacheWrite, 0);
    return u;
}

std::int64_t stringChars(dom::element obj, const char* key) {
    std::string_view s;
    if (obj[key].get_string().get(s))
        return 0;
    return static_cast<std::int64_t>(s.size());
}

dom::parser& threadParser() {
    thread_local dom::parser parser;
    return parser;
}

} // namespace

Result<Usage> usageFromBody(ApiFormat format, std::string_view body) {
    dom::element doc;
    if (threadParser().parse(body.data(), body.size(), true).get(doc))
        return Error{ErrorCode::ParseError, "the answer is not valid JSON"};
    dom::element usage;
    if (doc["usage"].get(usage) || !usage.is_object())
        return Error{ErrorCode::NotFound, "the answer carries no usage"};
    if (format == ApiFormat::Anthropic) {
        Usage u;
        applyAnthropic(usage, u);
        return u;
    }
    return fromOpenAI(usage);
}

bool StreamUsage::onEvent(std::string_view eventName, std::string_view data) {
    if (data.empty() || data.front() != '{')
        return false; // "[DONE]", pings without data
    dom::element doc;
    if (threadParser().parse(data.data(), data.size(), true).get(doc) || !doc.is_object())
        return false;
    if (format_ == ApiFormat::OpenAI) {
        dom::array choices;
        if (!doc["choices"].get_array().get(choices)) {
            for (dom::element c : choices) {
                dom::element delta;
                if (c["delta"].get(delta) || !delta.is_object())
                    continue;
                textChars_ += stringChars(delta, "content") + stringChars(delta, "reasoning_content");
                dom::array calls;
                if (!delta["tool_calls"].get_array().get(calls)) {
                    for (dom::element call : calls) {
                        dom::element fn;
                        if (!call["function"].get(fn) && fn.is_object())
                            textChars_ += stringChars(fn, "arguments");
                    }
                }
            }
        }
        dom::element usage;
        if (doc["usage"].get(usage) || !usage.is_object())
            return false;
        usage_ = fromOpenAI(usage);
        reported_ = true;
        return true;
    }
    std::string_view type;
    if (doc["type"].get_string().get(type))
        type = eventName;
    dom::element usage;
    if (type == "message_start") {
        dom::element message;
        if (!doc["message"].get(message) && !message["usage"].get(usage) && usage.is_object()) {
            applyAnthropic(usage, usage_);
            reported_ = true;
            return true;
        }
    } else if (type == "message_delta") {
        if (!doc["usage"].get(usage) && usage.is_object()) {
            applyAnthropic(usage, usage_);
            reported_ = true;
            return true;
        }
    } else if (type == "content_block_delta") {
        dom::element delta;
        if (!doc["delta"].get(delta) && delta.is_object())
            textChars_ += stringChars(delta, "text") + stringChars(delta, "partial_json") +
                          stringChars(delta, "thinking");
    }
    return false;
}

} // namespace trollproxy
