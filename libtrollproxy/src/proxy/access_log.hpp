// The access log: one JSON line per request on stderr.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "trollproxy/money.hpp"
#include "trollproxy/usage.hpp"

namespace trollproxy::internal {

/// What one line says about a request.
struct AccessRecord {
    std::int64_t timestampMs = 0;
    std::string_view requestId;
    std::string_view user;
    std::string_view model;
    std::string_view route;
    int status = 0;
    const Usage* usage = nullptr; ///< when the request was billed
    Money charged;
    Money shortfall;
    std::string_view pool;
    std::int64_t latencyMs = 0;
    std::string_view note;
};

/// The line, newline included.
std::string accessLine(const AccessRecord& record);

/// Writes the line to stderr in one call.
void writeAccessLog(const AccessRecord& record);

} // namespace trollproxy::internal
