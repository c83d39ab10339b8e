// An incremental Server-Sent Events parser that accepts bytes split anywhere.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "trollproxy/result.hpp"

namespace trollproxy {

/// One block of the stream up to and including its blank line: its name
/// ("message" when none was given), the data lines joined by '\n', and the raw
/// bytes as received (so a proxy can pass it on unchanged). A block without
/// data lines (comments only, a keep-alive) is not an event in the SSE sense:
/// it is still reported, with `hasData` false, so that no byte is lost.
struct SseEvent {
    std::string_view name;
    std::string_view data;
    std::string_view raw;
    bool hasData = false;
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
    std::string_view finish() const { return std::string_view(raw_).substr(blockStart_); }

private:
    void processLine(std::string_view line);
    Error tooLarge();
    void dispatchBlock();

    Handler handler_;
    std::size_t maxEventBytes_;
    std::string raw_; // unconsumed bytes; the current block starts at blockStart_
    std::size_t blockStart_ = 0;
    std::size_t lineStart_ = 0;
    std::size_t scanPos_ = 0;
    bool lastWasCr_ = false;
    bool pendingDispatch_ = false; // a blank line ended in '\r' at the chunk's end
    std::string name_;
    std::string data_;
    bool hasData_ = false;
    bool failed_ = false;
};

} // namespace trollproxy
