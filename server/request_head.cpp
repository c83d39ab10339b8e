// A request head scanned as its bytes arrive, and the answers to heads that are refused.
#include "request_head.hpp"

#include <algorithm>
#include <cctype>
#include <string_view>

namespace trollproxy::server {

namespace {

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

// Notes the framing headers as httplib will read them: the name is exactly what
// precedes the first ':' (no trimming), and lines not ending in CRLF are skipped.
void noteHeader(HeadScan& h, std::string_view line) {
    if (line.empty() || line.back() != '\r')
        return;
    auto colon = line.find(':');
    if (colon == std::string_view::npos)
        return;
    std::string_view name = line.substr(0, colon);
    std::string_view value = trim(line.substr(colon + 1));
    if (iequals(name, "content-length")) {
        bool digits = !value.empty() && value.size() <= 18 &&
                      value.find_first_not_of("0123456789") == std::string_view::npos;
        std::uint64_t n = digits ? std::stoull(std::string(value)) : 0;
        if (!digits || (h.contentLength && *h.contentLength != n))
            h.badLength = true;
        h.contentLength = n;
    } else if (iequals(name, "transfer-encoding") && !value.empty()) {
        h.transferEncoding += (h.transferEncoding.empty() ? "" : ",") + std::string(value);
    }
}

} // namespace

// Scans `buf` from where the last call stopped; counts lines and bytes as they
// arrive, so a head sent a byte at a time costs no rescans.
HeadVerdict scanHead(std::string& buf, HeadScan& h, const HeadLimits& limits) {
    if (!h.requestLine && h.scanned == 0) {
        // Empty lines before a request line are ignored (RFC 9112 section 2.2).
        auto first = buf.find_first_not_of("\r\n");
        buf.erase(0, first == std::string::npos ? buf.size() : first);
    }
    for (;;) {
        auto nl = buf.find('\n', h.scanned);
        if (nl == std::string::npos)
            return buf.size() > limits.maxHeadBytes ? HeadVerdict::TooLarge
                                                    : HeadVerdict::Incomplete;
        std::string_view line(buf.data() + h.scanned, nl - h.scanned);
        h.scanned = nl + 1;
        if (h.scanned > limits.maxHeadBytes)
            return HeadVerdict::TooLarge;
        if (!h.requestLine) {
            h.requestLine = true;
        } else if (line == "\r") {
            h.length = h.scanned;
            if (h.badLength || (h.contentLength && !h.transferEncoding.empty()))
                return HeadVerdict::BadFraming;
            if (!h.transferEncoding.empty() && !iequals(h.transferEncoding, "chunked"))
                return HeadVerdict::UnknownEncoding;
            return HeadVerdict::Complete;
        } else if (++h.headerLines > limits.maxHeaders) {
            return HeadVerdict::TooManyHeaders;
        } else {
            noteHeader(h, line);
        }
    }
}

std::string refusal(int status, const char* reason, const std::string& message) {
    std::string body = "{\"error\":{\"message\":\"" + message + "\",\"type\":\"" +
                       (status >= 500 ? "server_error" : "invalid_request_error") +
                       "\",\"param\":null,\"code\":null}}";
    return "HTTP/1.1 " + std::to_string(status) + " " + reason +
           "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\nConnection: close\r\n\r\n" + body;
}

std::string refusalFor(HeadVerdict v, const HeadLimits& limits) {
    switch (v) {
    case HeadVerdict::TooLarge:
        return refusal(431, "Request Header Fields Too Large",
                       "the request line and headers are larger than " +
                           std::to_string(limits.maxHeadBytes) + " bytes");
    case HeadVerdict::TooManyHeaders:
        return refusal(431, "Request Header Fields Too Large",
                       "more than " + std::to_string(limits.maxHeaders) + " header fields");
    case HeadVerdict::BadFraming:
        return refusal(400, "Bad Request",
                       "invalid or conflicting Content-Length / Transfer-Encoding");
    case HeadVerdict::UnknownEncoding:
        return refusal(501, "Not Implemented", "only Transfer-Encoding: chunked is supported");
    default:
        return refusal(400, "Bad Request", "bad request");
    }
}

} // namespace trollproxy::server
