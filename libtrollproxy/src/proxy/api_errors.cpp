// Builds error bodies the official SDKs understand.
#include "proxy/api_errors.hpp"

#include "core/json_locate.hpp"
#include "core/json_writer.hpp"

namespace trollproxy::internal {

namespace {

const char* anthropicType(int status) {
    switch (status) {
    case 400:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 402:
        return "billing_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 503:
    case 529:
        return "overloaded_error";
    default:
        return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

const char* openaiType(int status) {
    switch (status) {
    case 401:
        return "authentication_error";
    case 402:
        return "insufficient_quota";
    case 403:
        return "permission_error";
    case 429:
        return "rate_limit_error";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

} // namespace

HttpResponse apiError(ApiFormat format, int status, std::string_view message,
                      std::string_view code) {
    HttpResponse r;
    r.status = status;
    if (format == ApiFormat::Anthropic) {
        r.body = std::string("{\"type\":\"error\",\"error\":{\"type\":\"") + anthropicType(status) +
                 "\",\"message\":" + jsonQuote(message) + "}}";
    } else {
        r.body = std::string("{\"error\":{\"message\":") + jsonQuote(message) + ",\"type\":\"" +
                 openaiType(status) + "\",\"param\":null,\"code\":" +
                 (code.empty() ? std::string("null") : jsonQuote(code)) + "}}";
    }
    return r;
}

} // namespace trollproxy::internal
