// The OpenAI Responses API (/v1/responses) wire format, for the test upstream.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "wire.hpp"

namespace fake {

/// What one Responses answer looks like.
struct ResponsesAnswer {
    std::string id; ///< resp_…; the item ids derive from it
    std::string model = "unknown";
    std::int64_t createdAt = 0;
    int chunks = 8;
    Tokens tokens;                    ///< input is uncached; cacheWrite is not reported by this API
    std::int64_t reasoningTokens = 0; ///< a part of tokens.output
    bool reportUsage = true;
    bool incomplete = false;         ///< status "incomplete" (max_output_tokens)
    bool reasoning = false;          ///< the request had "reasoning": a reasoning item comes first
    bool encryptedReasoning = false; ///< "include" asked for reasoning.encrypted_content
    bool store = true;
    bool afterToolOutput = false; ///< the input ends with a function_call_output
    std::string toolName;         ///< non-empty: a function call instead of a message
    std::string echo; ///< request settings the response object repeats, as `"key":value,` members
};

/// The request fields an answer depends on. `firstFunction` gets the name of the first
/// function tool (called only when the test asks, and not right after a tool's output, so an
/// agent's tool turn ends). False: not a JSON object.
bool readResponsesRequest(const std::string& body, ResponsesAnswer& a, bool& stream,
                          std::string& firstFunction);

/// usage: input_tokens includes cached_tokens, output_tokens includes reasoning_tokens.
std::string responsesUsage(const ResponsesAnswer& a);

/// The response object: `done` false is the in-progress shape (no output, usage null).
std::string responsesObject(const ResponsesAnswer& a, bool done);

/// A stream's SSE events, split where a test may cut the connection: before delta i.
struct ResponsesEvents {
    std::string head; ///< created, in_progress, the reasoning item, the answer item's start
    std::vector<std::string> deltas;
    std::string tail; ///< the answer item's end, then completed (or incomplete)
};
ResponsesEvents responsesEvents(const ResponsesAnswer& a);

/// The body of DELETE /v1/responses/{id}.
std::string responsesDeleted(const std::string& id);

/// POST /v1/messages/count_tokens: {"input_tokens": body bytes / 4}.
std::string countTokensAnswer(const std::string& body);

/// The responses made with store on, for GET and DELETE /v1/responses/{id}; keeps the newest 1000.
class ResponsesStore {
public:
    std::string newId();
    void put(const std::string& id, std::string json);
    bool get(const std::string& id, std::string& json) const;
    bool remove(const std::string& id);

private:
    mutable std::mutex mutex_;
    std::map<std::string, std::string> byId_;
    std::deque<std::string> order_;
    std::uint64_t next_ = 0;
};

} // namespace fake
