// The client's request body: the few fields the proxy reads, and the rewrite for the upstream.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "trollproxy/result.hpp"
#include "trollproxy/usage.hpp"

namespace trollproxy::internal {

/// What the proxy needs to know about a request. Everything else is opaque.
struct ClientRequest {
    std::string model;
    bool stream = false;
    /// OpenAI: the client itself asked for stream_options.include_usage.
    bool clientAskedUsage = false;
    /// The largest of max_tokens / max_completion_tokens / max_output_tokens;
    /// -1 when none is present.
    std::int64_t maxOutputTokens = -1;
    /// OpenAI's `n`: how many answers the upstream will generate.
    std::int64_t choices = 1;
    /// Responses API: the earlier response this one continues, or "".
    std::string previousResponseId;
};

/// What a body asks for: an answer, or only a count of its tokens
/// (Anthropic's count_tokens takes no max_tokens).
enum class BodyPurpose { Generate, CountTokens };

/// The largest `n` accepted.
inline constexpr std::int64_t kMaxChoices = 128;

/// Validates the body (JSON object, UTF-8, types of the fields read) and reads
/// those fields. A duplicate key in the top-level object or in stream_options,
/// compared with escapes decoded, is refused: the proxy and the upstream must
/// read the same request. Errors are InvalidArgument / ParseError with a
/// client-facing message.
Result<ClientRequest> parseClientRequest(ApiFormat format, std::string_view body,
                                         BodyPurpose purpose = BodyPurpose::Generate);

/// The body for the upstream: byte-for-byte the client's, except `model`
/// becomes `upstreamModel` and an OpenAI stream gets
/// `stream_options.include_usage: true`. `body` must have passed
/// parseClientRequest.
std::string rewriteForUpstream(ApiFormat format, std::string_view body, const ClientRequest& req,
                               std::string_view upstreamModel);

/// True for an OpenAI stream chunk that carries usage and no choices (the
/// chunk that include_usage adds).
bool isUsageOnlyChunk(std::string_view data);

} // namespace trollproxy::internal
