// Names of error codes.
#include "trollproxy/result.hpp"

namespace trollproxy {

const char* errorCodeName(ErrorCode code) noexcept {
    switch (code) {
    case ErrorCode::InvalidArgument:
        return "invalid_argument";
    case ErrorCode::ParseError:
        return "parse_error";
    case ErrorCode::NotFound:
        return "not_found";
    case ErrorCode::Unavailable:
        return "unavailable";
    case ErrorCode::Timeout:
        return "timeout";
    case ErrorCode::Conflict:
        return "conflict";
    case ErrorCode::Internal:
        return "internal";
    }
    return "internal";
}

} // namespace trollproxy
