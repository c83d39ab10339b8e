// Answer bodies in the providers' wire formats, for the test upstream.
#pragma once

#include <cstdint>
#include <string>

namespace fake {

/// Token counts to report; `style` decides the OpenAI usage shape.
struct Tokens {
    std::int64_t input = 0; ///< uncached input
    std::int64_t output = 0;
    std::int64_t cacheWrite = 0;
    std::int64_t cacheRead = 0;
};

enum class UsageStyle { OpenAI, LiteLLM };

/// What one answer looks like.
struct Answer {
    std::string model;
    std::string toolName; ///< empty: a text answer
    int chunks = 8;
    Tokens tokens;
    bool reportUsage = true;
    UsageStyle style = UsageStyle::OpenAI;
    bool includeUsage = false; ///< OpenAI stream: stream_options.include_usage
};

std::string quote(const std::string& s);

/// The text of content chunk i (and the tool arguments piece i).
std::string chunkText(int i);
std::string toolArgsPiece(int i, int chunks);

std::string openaiUsage(const Answer& a);
std::string openaiCompletion(const Answer& a);
/// The SSE events of an OpenAI stream: first, content i, finish, usage, done.
std::string openaiFirstChunk(const Answer& a);
std::string openaiContentChunk(const Answer& a, int i);
std::string openaiFinishChunk(const Answer& a);
std::string openaiUsageChunk(const Answer& a);

std::string anthropicUsage(const Answer& a, std::int64_t output);
std::string anthropicMessage(const Answer& a);
std::string anthropicStart(const Answer& a);
std::string anthropicBlockStart(const Answer& a);
std::string anthropicDelta(const Answer& a, int i);
std::string anthropicFinish(const Answer& a); ///< block stop, message_delta, message_stop

std::string openaiError(int status, const std::string& message);
std::string anthropicError(int status, const std::string& message);

} // namespace fake
