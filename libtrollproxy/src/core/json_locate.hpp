// Locates the first syntax error in JSON text, for messages with line and column.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace trollproxy::internal {

/// Where and why JSON text is malformed.
struct JsonSyntaxError {
    std::size_t line = 0;   ///< 1-based
    std::size_t column = 0; ///< 1-based, in bytes
    std::string reason;
};

/// Scans the text with a strict RFC 8259 grammar. Returns false and fills
/// `error` at the first problem; true when the text is valid JSON.
bool checkJsonSyntax(std::string_view text, JsonSyntaxError& error);

} // namespace trollproxy::internal
