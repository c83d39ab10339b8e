// A request head scanned as its bytes arrive, and the answers to heads that are refused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "http_server.hpp"

namespace trollproxy::server {

/// What the scan of a request head concluded: wait for more, run it, or refuse it.
enum class HeadVerdict {
    Incomplete,
    Complete,
    TooLarge,
    TooManyHeaders,
    BadFraming,
    UnknownEncoding
};

/// What the scan of one request head found so far; reset for each request.
struct HeadScan {
    std::size_t scanned = 0; ///< bytes of the buffer split into whole lines
    std::size_t headerLines = 0;
    bool requestLine = false;
    std::size_t length = 0; ///< request line to blank line, once complete
    std::optional<std::uint64_t> contentLength;
    bool badLength = false; ///< unparseable, or two different values
    std::string transferEncoding;

    bool hasBody() const { return contentLength || !transferEncoding.empty(); }
};

/// Scans `buf` from where the last call stopped (`h` keeps the place), within `limits`.
HeadVerdict scanHead(std::string& buf, HeadScan& h, const HeadLimits& limits);

/// An answer written straight to the socket, for requests httplib never sees.
std::string refusal(int status, const char* reason, const std::string& message);

/// The answer to a head the scan refused.
std::string refusalFor(HeadVerdict v, const HeadLimits& limits);

} // namespace trollproxy::server
