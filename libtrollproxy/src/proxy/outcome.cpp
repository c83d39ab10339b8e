// The one table from outcome to status and error code.
#include "proxy/outcome.hpp"

#include "proxy/api_errors.hpp"

namespace trollproxy::internal {

namespace {

struct Mapping {
    int status;
    const char* code; ///< OpenAI's error.code; nullptr for none
};

Mapping mapping(OutcomeKind kind) {
    switch (kind) {
    case OutcomeKind::Ok:
        return {200, nullptr};
    case OutcomeKind::BadRequest:
    case OutcomeKind::BadHeader:
        return {400, nullptr};
    case OutcomeKind::MissingKey:
    case OutcomeKind::InvalidKey:
    case OutcomeKind::RevokedKey:
    case OutcomeKind::ExpiredKey:
        return {401, "invalid_api_key"};
    case OutcomeKind::InsufficientCredits:
        return {402, "insufficient_credits"};
    case OutcomeKind::MigrationRequired:
        return {403, "migration_required"};
    case OutcomeKind::NoRoute:
        return {404, nullptr};
    case OutcomeKind::ModelNotFound:
        return {404, "model_not_found"};
    case OutcomeKind::ResponsesEndpointMissing:
        return {404, "responses_endpoint_missing"};
    case OutcomeKind::EndpointMissing:
        return {404, "endpoint_missing"};
    case OutcomeKind::PreviousResponseNotFound:
        return {404, "previous_response_not_found"};
    case OutcomeKind::ResponseNotFound:
        return {404, "response_not_found"};
    case OutcomeKind::MethodNotAllowed:
        return {405, nullptr};
    case OutcomeKind::BodyTooLarge:
        return {413, nullptr};
    case OutcomeKind::RateLimited:
        return {429, "rate_limit_exceeded"};
    case OutcomeKind::UpstreamRateLimited:
        return {429, "upstream_rate_limited"};
    case OutcomeKind::Internal:
        return {500, nullptr};
    case OutcomeKind::UpstreamError:
        return {502, "upstream_error"};
    case OutcomeKind::LedgerUnavailable:
        return {503, "ledger_unavailable"};
    case OutcomeKind::UpstreamUnavailable:
        return {503, "upstream_unavailable"};
    case OutcomeKind::UpstreamTimeout:
        return {504, "upstream_timeout"};
    }
    return {500, nullptr};
}

} // namespace

int httpStatus(OutcomeKind kind) {
    return mapping(kind).status;
}

HttpResponse toHttp(const Outcome& outcome, ApiFormat format) {
    Mapping m = mapping(outcome.kind);
    HttpResponse r = apiError(format, m.status, outcome.message, m.code ? m.code : "");
    r.headers = outcome.headers;
    return r;
}

} // namespace trollproxy::internal
