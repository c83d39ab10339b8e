// An incremental Server-Sent Events parser that accepts bytes split anywhere.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "trollproxy/result.hpp"

namespace trollproxy {

/// One dispatched event: its name ("message" when none was given), the data
/// lines joined by '\n', and the raw bytes of the event as received, including
/// its terminating blank line (so a proxy can pass it on unchanged).
struct SseEvent {
    std::string_view name;
    std::string_view data;
    std::string_view raw;
};

/// Parses a byte stream into events. Feed chunks of any size; a split inside a
/// line, inside "\r\n" or inside a UTF-8 character gives the same events.
class SseParser {
public:
    using Handler = std::function<void(const SseEvent&)>;

    /// maxEventBytes bounds the size of one event; a larger one is an error.
    explicit SseParser(Handler handler, std::size_t maxEventBytes = 8 * 1024 * 1024);

    /// Feeds bytes; calls the handler for each complete event. After an error
    /// the parser stays failed.
    Result<void> feed(std::string_view bytes);

    /// Ends the stream: dispatches nothing (an unterminated event is dropped, as
    /// the SSE spec says) and returns the bytes of that unterminated tail.
    std::string_view finish() const { return raw_; }

private:
    void processLine(std::string_view line);
    void dispatch();

    Handler handler_;
    std::size_t maxEventBytes_;
    std::string raw_;    // bytes of the event being read
    std::size_t lineStart_ = 0;
    std::size_t scanPos_ = 0;
    bool lastWasCr_ = false;
    std::string name_;
    std::string data_;
    bool hasData_ = false;
    bool failed_ = false;
};

} // namespace trollproxy
