// Outcome: how a request ended when it was not served, as a value; one mapping to HTTP.
#pragma once

#include <string>

#include "trollproxy/proxy.hpp"
#include "trollproxy/usage.hpp"

namespace trollproxy::internal {

/// Every way the proxy itself refuses or fails a request. The upstream's own
/// refusals are relayed as the upstream sent them and are not listed here.
enum class OutcomeKind {
    Ok,                       ///< go on
    BadRequest,               ///< 400
    BadHeader,                ///< 400
    MissingKey,               ///< 401
    InvalidKey,               ///< 401
    RevokedKey,               ///< 401
    ExpiredKey,               ///< 401
    InsufficientCredits,      ///< 402
    MigrationRequired,        ///< 403
    NoRoute,                  ///< 404
    ModelNotFound,            ///< 404
    ResponsesEndpointMissing, ///< 404
    EndpointMissing,          ///< 404
    PreviousResponseNotFound, ///< 404
    ResponseNotFound,         ///< 404
    MethodNotAllowed,         ///< 405
    BodyTooLarge,             ///< 413
    RateLimited,              ///< 429, the caller's own limit
    UpstreamRateLimited,      ///< 429, every upstream key is cooling down
    Internal,                 ///< 500
    UpstreamError,            ///< 502
    LedgerUnavailable,        ///< 503
    UpstreamUnavailable,      ///< 503
    UpstreamTimeout,          ///< 504
};

/// A refusal or failure, with what the client should read.
struct Outcome {
    OutcomeKind kind = OutcomeKind::Ok;
    std::string message;
    HeaderList headers; ///< e.g. Retry-After

    bool ok() const { return kind == OutcomeKind::Ok; }
};

/// Shorthand for an outcome with a message.
inline Outcome refuse(OutcomeKind kind, std::string message, HeaderList headers = {}) {
    return Outcome{kind, std::move(message), std::move(headers)};
}

/// The HTTP status of an outcome.
int httpStatus(OutcomeKind kind);

/// The one mapping from an outcome to an answer in the caller's format:
/// status, error body (OpenAI, Anthropic or Responses shape) and headers.
HttpResponse toHttp(const Outcome& outcome, ApiFormat format);

} // namespace trollproxy::internal
