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

// Larger counts are not believed: no request produces a billion tokens of one
// kind, and sums and products of counts stay far from overflowing.
constexpr std::int64_t kMaxCount = 1'000'000'000;

enum class Field { Absent, Valid, Invalid };

// A token count: a non-negative integer (an integral double such as 10.0 is
// accepted) up to kMaxCount. Null reads as absent.
Field count(dom::element obj, const char* key, std::int64_t& out) {
    dom::element v;
    if (obj[key].get(v) || v.is_null())
        return Field::Absent;
    std::int64_t n = 0;
    if (v.is_int64() || v.is_uint64()) {
        if (v.get_int64().get(n))
            return Field::Invalid;
    } else if (v.is_double()) {
        double d = 0;
        if (v.get_double().get(d) || !(d >= 0 && d <= static_cast<double>(kMaxCount)) ||
            d != static_cast<double>(static_cast<std::int64_t>(d)))
            return Field::Invalid;
        n = static_cast<std::int64_t>(d);
    } else {
        return Field::Invalid;
    }
    if (n < 0 || n > kMaxCount)
        return Field::Invalid;
    out = n;
    return Field::Valid;
}

Error invalidUsage(std::string why) {
    return Error{ErrorCode::InvalidArgument, "invalid usage: " + std::move(why)};
}

// Reads the counts named in `keys` into `outs`; absent ones keep their value.
// Fails when any is invalid, or when a required one is absent.
Result<void> readCounts(dom::element usage,
                        std::initializer_list<std::pair<const char*, std::int64_t*>> keys,
                        std::initializer_list<const char*> required) {
    for (auto [key, out] : keys) {
        Field f = count(usage, key, *out);
        if (f == Field::Invalid)
            return invalidUsage(std::string(key) + " is not a token count");
        if (f == Field::Absent) {
            for (const char* r : required) {
                if (std::string_view(r) == key)
                    return invalidUsage(std::string(key) + " is missing");
            }
        }
    }
    return {};
}

// The split of cache writes by TTL, when `obj[key]` carries it:
// {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}. The 1-hour part is
// priced apart; the two parts make up the cache writes.
Result<void> readCacheTtl(dom::element obj, const char* key, Usage& u) {
    dom::element split;
    if (obj[key].get(split) || split.is_null())
        return {};
    if (!split.is_object())
        return invalidUsage(std::string(key) + " is not an object");
    std::int64_t fiveMin = 0, oneHour = 0;
    if (auto r = readCounts(
            split,
            {{"ephemeral_5m_input_tokens", &fiveMin}, {"ephemeral_1h_input_tokens", &oneHour}}, {});
        !r)
        return r;
    u.cacheWrite1h = oneHour;
    u.cacheWrite = std::max(u.cacheWrite, fiveMin + oneHour);
    return {};
}

// Applies the fields an Anthropic usage object carries; absent ones keep their
// value. `required` names the counts this event must carry.
Result<void> applyAnthropic(dom::element usage, Usage& u,
                            std::initializer_list<const char*> required) {
    Usage next = u;
    if (auto r = readCounts(usage,
                            {{"input_tokens", &next.uncachedInput},
                             {"cache_creation_input_tokens", &next.cacheWrite},
                             {"cache_read_input_tokens", &next.cacheRead},
                             {"output_tokens", &next.output}},
                            required);
        !r)
        return r;
    if (auto r = readCacheTtl(usage, "cache_creation", next); !r)
        return r;
    u = next;
    return {};
}

Result<Usage> fromOpenAI(dom::element usage) {
    Usage u;
    std::int64_t prompt = 0, cached = 0, litellmRead = 0, litellmWrite = 0;
    if (auto r = readCounts(usage,
                            {{"prompt_tokens", &prompt},
                             {"completion_tokens", &u.output},
                             {"cache_read_input_tokens", &litellmRead},
                             {"cache_creation_input_tokens", &litellmWrite}},
                            {"prompt_tokens", "completion_tokens"});
        !r)
        return r.error();
    dom::element details;
    const bool hasDetails = !usage["prompt_tokens_details"].get(details) && details.is_object();
    if (hasDetails) {
        if (count(details, "cached_tokens", cached) == Field::Invalid)
            return invalidUsage("cached_tokens is not a token count");
    }
    // Cached and written tokens are parts of the prompt.
    if (cached > prompt || litellmRead > prompt || litellmWrite > prompt)
        return invalidUsage("cached or cache-written tokens exceed prompt_tokens");
    u.cacheRead = std::max(litellmRead, cached);
    u.cacheWrite = litellmWrite;
    // LiteLLM passes Anthropic's TTL split on as usage.cache_creation or as
    // prompt_tokens_details.cache_creation_token_details.
    if (auto r = readCacheTtl(usage, "cache_creation", u); !r)
        return r.error();
    if (hasDetails) {
        if (auto r = readCacheTtl(details, "cache_creation_token_details", u); !r)
            return r.error();
    }
    if (u.cacheWrite > prompt)
        return invalidUsage("cache-written tokens exceed prompt_tokens");
    // Never below zero; if a server's prompt_tokens left the writes out, the
    // clamp avoids charging the same tokens twice at the cheaper rate only.
    u.uncachedInput = std::max<std::int64_t>(prompt - u.cacheRead - u.cacheWrite, 0);
    return u;
}

// Responses API: input_tokens includes the cached tokens; output_tokens already
// includes the reasoning tokens (never added twice).
Result<Usage> fromResponses(dom::element usage) {
    Usage u;
    std::int64_t input = 0, cached = 0;
    if (auto r = readCounts(usage, {{"input_tokens", &input}, {"output_tokens", &u.output}},
                            {"input_tokens", "output_tokens"});
        !r)
        return r.error();
    dom::element details;
    if (!usage["input_tokens_details"].get(details) && details.is_object()) {
        if (count(details, "cached_tokens", cached) == Field::Invalid)
            return invalidUsage("cached_tokens is not a token count");
    }
    if (cached > input)
        return invalidUsage("cached_tokens exceed input_tokens");
    u.cacheRead = cached;
    u.uncachedInput = input - cached;
    return u;
}

Result<Usage> fromFormat(ApiFormat format, dom::element usage) {
    if (format == ApiFormat::Responses)
        return fromResponses(usage);
    if (format == ApiFormat::OpenAI)
        return fromOpenAI(usage);
    Usage u;
    if (auto r = applyAnthropic(usage, u, {"input_tokens", "output_tokens"}); !r)
        return r.error();
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

std::string responseIdFromBody(std::string_view body) {
    dom::element doc;
    std::string_view id;
    if (threadParser().parse(body.data(), body.size(), true).get(doc) ||
        doc["id"].get_string().get(id))
        return {};
    return std::string(id);
}

Result<Usage> usageFromBody(ApiFormat format, std::string_view body) {
    dom::element doc;
    if (threadParser().parse(body.data(), body.size(), true).get(doc))
        return Error{ErrorCode::ParseError, "the answer is not valid JSON"};
    dom::element usage;
    if (doc["usage"].get(usage) || !usage.is_object())
        return Error{ErrorCode::NotFound, "the answer carries no usage"};
    return fromFormat(format, usage);
}

namespace {

// Characters of text in an OpenAI chunk's choices: content, reasoning, refusals
// and tool-call arguments.
std::int64_t openAIDeltaChars(dom::element doc) {
    std::int64_t chars = 0;
    dom::array choices;
    if (doc["choices"].get_array().get(choices))
        return 0;
    for (dom::element c : choices) {
        dom::element delta;
        if (c["delta"].get(delta) || !delta.is_object())
            continue;
        chars += stringChars(delta, "content") + stringChars(delta, "reasoning_content") +
                 stringChars(delta, "reasoning") + stringChars(delta, "refusal");
        dom::array calls;
        if (!delta["tool_calls"].get_array().get(calls)) {
            for (dom::element call : calls) {
                dom::element fn;
                if (!call["function"].get(fn) && fn.is_object())
                    chars += stringChars(fn, "arguments");
            }
        }
    }
    return chars;
}

} // namespace

struct StreamUsageFormats {
    // Takes the usage an event carries (non-null), or the reason it cannot be
    // believed. `read` turns a usage object into counts.
    template <class Read> static bool takeUsage(StreamUsage& s, dom::element usage, Read read) {
        if (!usage.is_object()) {
            s.markInvalid("usage is not an object");
            return true;
        }
        Result<Usage> u = read(usage);
        if (!u) {
            s.markInvalid(u.error().message);
            return true;
        }
        s.noteUsage(*u);
        return true;
    }

    static bool openAIEvent(StreamUsage& s, dom::element doc) {
        s.textChars_ += openAIDeltaChars(doc);
        dom::element usage;
        if (doc["usage"].get(usage) || usage.is_null())
            return false;
        return takeUsage(s, usage, fromOpenAI);
    }

    static bool responsesEvent(StreamUsage& s, std::string_view type, dom::element doc) {
        // Text the client is sent: answer text, refusals, reasoning and tool input.
        static constexpr std::string_view kDeltas[] = {
            "response.output_text.delta",
            "response.refusal.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_text.delta",
            "response.function_call_arguments.delta",
            "response.custom_tool_call_input.delta",
            "response.audio.transcript.delta",
        };
        for (std::string_view d : kDeltas) {
            if (type == d) {
                s.textChars_ += stringChars(doc, "delta");
                return false;
            }
        }
        dom::element response;
        if (doc["response"].get(response) || !response.is_object())
            return false;
        std::string_view id;
        if (s.responseId_.empty() && !response["id"].get_string().get(id))
            s.responseId_ = std::string(id);
        if (type != "response.completed" && type != "response.incomplete" &&
            type != "response.failed")
            return false;
        dom::element usage;
        if (response["usage"].get(usage) || usage.is_null())
            return false;
        return takeUsage(s, usage, fromResponses);
    }

    // Anthropic: message_start carries the first counts, message_delta the
    // cumulative ones; content_block_delta carries text.
    static bool anthropicEvent(StreamUsage& s, std::string_view type, dom::element doc) {
        dom::element usage;
        bool present = false;
        bool atStart = type == "message_start";
        if (atStart) {
            dom::element message;
            present =
                !doc["message"].get(message) && !message["usage"].get(usage) && !usage.is_null();
        } else if (type == "message_delta") {
            present = !doc["usage"].get(usage) && !usage.is_null();
        } else if (type == "content_block_delta") {
            dom::element delta;
            if (!doc["delta"].get(delta) && delta.is_object())
                s.textChars_ += stringChars(delta, "text") + stringChars(delta, "partial_json") +
                                stringChars(delta, "thinking");
        }
        if (!present)
            return false;
        return takeUsage(s, usage, [&](dom::element u) -> Result<Usage> {
            Usage next = s.usage_;
            auto r = atStart ? applyAnthropic(u, next, {"input_tokens", "output_tokens"})
                             : applyAnthropic(u, next, {"output_tokens"});
            if (!r)
                return r.error();
            return next;
        });
    }
};

bool StreamUsage::onEvent(std::string_view eventName, std::string_view data) {
    if (data.empty() || data.front() != '{')
        return false; // "[DONE]", pings without data
    dom::element doc;
    if (threadParser().parse(data.data(), data.size(), true).get(doc) || !doc.is_object()) {
        // An event that names usage but cannot be read (a count beyond 64 bits,
        // broken JSON) makes the stream's usage unbelievable.
        if (data.find("\"usage\"") != std::string_view::npos) {
            markInvalid("invalid usage: an event carrying usage could not be read");
            return true;
        }
        return false;
    }
    if (format_ == ApiFormat::OpenAI)
        return StreamUsageFormats::openAIEvent(*this, doc);
    std::string_view type;
    if (doc["type"].get_string().get(type))
        type = eventName;
    if (format_ == ApiFormat::Responses)
        return StreamUsageFormats::responsesEvent(*this, type, doc);
    return StreamUsageFormats::anthropicEvent(*this, type, doc);
}

void StreamUsage::noteUsage(const Usage& usage) {
    usage_ = usage;
    reported_ = true;
    charsAtUsage_ = textChars_;
}

void StreamUsage::markInvalid(std::string why) {
    if (invalidReason_.empty())
        invalidReason_ = std::move(why);
}

} // namespace trollproxy
