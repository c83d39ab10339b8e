// The exact shapes of OpenAI, LiteLLM and Anthropic answers, streamed and whole.
#include "wire.hpp"

#include <cstdio>
#include <ctime>

namespace fake {

namespace {

const char* kId = "fake0123456789";

std::string ev(const std::string& json) {
    return "data: " + json + "\n\n";
}

std::string aev(const char* name, const std::string& json) {
    return std::string("event: ") + name + "\ndata: " + json + "\n\n";
}

std::string created() {
    return std::to_string(static_cast<long long>(std::time(nullptr)));
}

} // namespace

std::string quote(const std::string& s) {
    std::string out = "\"";
    for (char ch : s) {
        auto c = static_cast<unsigned char>(ch);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += ch;
        } else if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else {
            out += ch;
        }
    }
    return out + "\"";
}

std::string chunkText(int i) {
    return i == 0 ? "Hello" : " word" + std::to_string(i);
}

std::string toolArgsPiece(int i, int chunks) {
    // Pieces of {"city": "Paris"} spread over the chunks.
    static const std::string whole = "{\"city\": \"Paris\", \"unit\": \"celsius\"}";
    std::size_t per = whole.size() / static_cast<std::size_t>(chunks) + 1;
    std::size_t from = static_cast<std::size_t>(i) * per;
    return from >= whole.size() ? std::string() : whole.substr(from, per);
}

std::string openaiUsage(const Answer& a) {
    const Tokens& t = a.tokens;
    if (a.style == UsageStyle::LiteLLM) {
        // LiteLLM's prompt_tokens include cache writes and cache reads.
        std::int64_t prompt = t.input + t.cacheWrite + t.cacheRead;
        return "{\"prompt_tokens\":" + std::to_string(prompt) +
               ",\"completion_tokens\":" + std::to_string(t.output) +
               ",\"total_tokens\":" + std::to_string(prompt + t.output) +
               ",\"prompt_tokens_details\":{\"cached_tokens\":" + std::to_string(t.cacheRead) +
               "},\"cache_creation_input_tokens\":" + std::to_string(t.cacheWrite) +
               ",\"cache_read_input_tokens\":" + std::to_string(t.cacheRead) + "}";
    }
    std::int64_t prompt = t.input + t.cacheRead; // OpenAI: cached tokens are inside prompt_tokens
    return "{\"prompt_tokens\":" + std::to_string(prompt) +
           ",\"completion_tokens\":" + std::to_string(t.output) +
           ",\"total_tokens\":" + std::to_string(prompt + t.output) +
           ",\"prompt_tokens_details\":{\"cached_tokens\":" + std::to_string(t.cacheRead) +
           ",\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_"
           "tokens\":0,"
           "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}";
}

std::string openaiCompletion(const Answer& a) {
    std::string message;
    if (a.toolName.empty()) {
        std::string text;
        for (int i = 0; i < a.chunks; ++i)
            text += chunkText(i);
        message = "{\"role\":\"assistant\",\"content\":" + quote(text) +
                  ",\"refusal\":null,\"annotations\":[]}";
    } else {
        std::string args;
        for (int i = 0; i < a.chunks; ++i)
            args += toolArgsPiece(i, a.chunks);
        message = "{\"role\":\"assistant\",\"content\":null,\"refusal\":null,\"tool_calls\":[{"
                  "\"id\":\"call_" +
                  std::string(kId) +
                  "\",\"type\":\"function\",\"function\":{\"name\":" + quote(a.toolName) +
                  ",\"arguments\":" + quote(args) + "}}]}";
    }
    return "{\"id\":\"chatcmpl-" + std::string(kId) +
           "\",\"object\":\"chat.completion\",\"created\":" + created() +
           ",\"model\":" + quote(a.model) + ",\"choices\":[{\"index\":0,\"message\":" + message +
           ",\"logprobs\":null,\"finish_reason\":\"" +
           (a.toolName.empty() ? "stop" : "tool_calls") + "\"}]" +
           (a.reportUsage ? ",\"usage\":" + openaiUsage(a) : std::string()) +
           ",\"service_tier\":\"default\",\"system_fingerprint\":null}";
}

namespace {
std::string openaiChunk(const Answer& a, const std::string& choices) {
    return ev("{\"id\":\"chatcmpl-" + std::string(kId) +
              "\",\"object\":\"chat.completion.chunk\",\"created\":" + created() +
              ",\"model\":" + quote(a.model) +
              ",\"service_tier\":\"default\",\"system_fingerprint\":null,\"choices\":" + choices +
              (a.includeUsage ? ",\"usage\":null" : "") + "}");
}
} // namespace

std::string openaiFirstChunk(const Answer& a) {
    return openaiChunk(a, "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":" +
                              std::string(a.toolName.empty() ? "\"\"" : "null") +
                              ",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]");
}

std::string openaiContentChunk(const Answer& a, int i) {
    if (a.toolName.empty())
        return openaiChunk(a, "[{\"index\":0,\"delta\":{\"content\":" + quote(chunkText(i)) +
                                  "},\"logprobs\":null,\"finish_reason\":null}]");
    std::string call =
        i == 0 ? "{\"index\":0,\"id\":\"call_" + std::string(kId) +
                     "\",\"type\":\"function\",\"function\":{\"name\":" + quote(a.toolName) +
                     ",\"arguments\":" + quote(toolArgsPiece(i, a.chunks)) + "}}"
               : "{\"index\":0,\"function\":{\"arguments\":" + quote(toolArgsPiece(i, a.chunks)) +
                     "}}";
    return openaiChunk(a, "[{\"index\":0,\"delta\":{\"tool_calls\":[" + call +
                              "]},\"logprobs\":null,\"finish_reason\":null}]");
}

std::string openaiFinishChunk(const Answer& a) {
    return openaiChunk(
        a, std::string("[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"") +
               (a.toolName.empty() ? "stop" : "tool_calls") + "\"}]");
}

std::string openaiUsageChunk(const Answer& a) {
    std::string usage =
        (a.includeUsage && a.reportUsage)
            ? ev("{\"id\":\"chatcmpl-" + std::string(kId) +
                 "\",\"object\":\"chat.completion.chunk\",\"created\":" + created() +
                 ",\"model\":" + quote(a.model) +
                 ",\"service_tier\":\"default\",\"system_fingerprint\":null,\"choices\":[],"
                 "\"usage\":" +
                 openaiUsage(a) + "}")
            : std::string();
    return usage + "data: [DONE]\n\n";
}

std::string anthropicUsage(const Answer& a, std::int64_t output) {
    const Tokens& t = a.tokens;
    return "{\"input_tokens\":" + std::to_string(t.input) +
           ",\"cache_creation_input_tokens\":" + std::to_string(t.cacheWrite) +
           ",\"cache_read_input_tokens\":" + std::to_string(t.cacheRead) +
           ",\"output_tokens\":" + std::to_string(output) + "}";
}

std::string anthropicMessage(const Answer& a) {
    std::string content;
    if (a.toolName.empty()) {
        std::string text;
        for (int i = 0; i < a.chunks; ++i)
            text += chunkText(i);
        content = "[{\"type\":\"text\",\"text\":" + quote(text) + "}]";
    } else {
        content = "[{\"type\":\"tool_use\",\"id\":\"toolu_" + std::string(kId) +
                  "\",\"name\":" + quote(a.toolName) +
                  ",\"input\":{\"city\":\"Paris\",\"unit\":\"celsius\"}}]";
    }
    return "{\"id\":\"msg_" + std::string(kId) +
           "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":" + quote(a.model) +
           ",\"content\":" + content + ",\"stop_reason\":\"" +
           (a.toolName.empty() ? "end_turn" : "tool_use") + "\",\"stop_sequence\":null" +
           (a.reportUsage ? ",\"usage\":" + anthropicUsage(a, a.tokens.output) : std::string()) +
           "}";
}

std::string anthropicStart(const Answer& a) {
    return aev("message_start",
               "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_" + std::string(kId) +
                   "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":" + quote(a.model) +
                   ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null" +
                   (a.reportUsage ? ",\"usage\":" + anthropicUsage(a, 1) : std::string()) + "}}");
}

std::string anthropicBlockStart(const Answer& a) {
    std::string block = a.toolName.empty()
                            ? "{\"type\":\"text\",\"text\":\"\"}"
                            : "{\"type\":\"tool_use\",\"id\":\"toolu_" + std::string(kId) +
                                  "\",\"name\":" + quote(a.toolName) + ",\"input\":{}}";
    return aev("content_block_start",
               "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":" + block + "}") +
           aev("ping", "{\"type\": \"ping\"}");
}

std::string anthropicDelta(const Answer& a, int i) {
    std::string delta = a.toolName.empty()
                            ? "{\"type\":\"text_delta\",\"text\":" + quote(chunkText(i)) + "}"
                            : "{\"type\":\"input_json_delta\",\"partial_json\":" +
                                  quote(toolArgsPiece(i, a.chunks)) + "}";
    return aev("content_block_delta",
               "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":" + delta + "}");
}

std::string anthropicFinish(const Answer& a) {
    return aev("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}") +
           aev("message_delta",
               std::string("{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"") +
                   (a.toolName.empty() ? "end_turn" : "tool_use") + "\",\"stop_sequence\":null}" +
                   (a.reportUsage ? ",\"usage\":" + anthropicUsage(a, a.tokens.output)
                                  : std::string()) +
                   "}") +
           aev("message_stop", "{\"type\":\"message_stop\"}");
}

std::string openaiError(int status, const std::string& message) {
    const char* type = status == 429   ? "requests"
                       : status == 401 ? "invalid_request_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    const char* code = status == 429   ? "\"rate_limit_exceeded\""
                       : status == 401 ? "\"invalid_api_key\""
                                       : "null";
    return "{\"error\":{\"message\":" + quote(message) + ",\"type\":\"" + type +
           "\",\"param\":null,\"code\":" + code + "}}";
}

std::string anthropicError(int status, const std::string& message) {
    const char* type = status == 429   ? "rate_limit_error"
                       : status == 401 ? "authentication_error"
                       : status == 403 ? "permission_error"
                       : status == 529 ? "overloaded_error"
                       : status >= 500 ? "api_error"
                                       : "invalid_request_error";
    return "{\"type\":\"error\",\"error\":{\"type\":\"" + std::string(type) +
           "\",\"message\":" + quote(message) + "}}";
}

} // namespace fake
