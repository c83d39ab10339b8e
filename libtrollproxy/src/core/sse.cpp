// Incremental SSE parsing: line endings \n, \r\n or \r, split anywhere across chunks.
#include "trollproxy/sse.hpp"

namespace trollproxy {

SseParser::SseParser(Handler handler, std::size_t maxEventBytes)
    : handler_(std::move(handler)), maxEventBytes_(maxEventBytes) {}

Result<void> SseParser::feed(std::string_view bytes) {
    if (failed_)
        return Error{ErrorCode::ParseError, "the event stream already failed"};
    raw_.append(bytes);
    while (scanPos_ < raw_.size()) {
        if (lastWasCr_) {
            // The previous chunk ended in '\r': a '\n' here completes "\r\n".
            lastWasCr_ = false;
            if (raw_[scanPos_] == '\n')
                lineStart_ = ++scanPos_;
            if (pendingDispatch_) {
                if (lineStart_ - blockStart_ > maxEventBytes_)
                    return tooLarge();
                dispatchBlock();
            }
            continue;
        }
        std::size_t end = raw_.find_first_of("\r\n", scanPos_);
        if (end == std::string::npos) {
            scanPos_ = raw_.size();
            break;
        }
        std::size_t next = end + 1;
        if (raw_[end] == '\r') {
            if (next < raw_.size()) {
                if (raw_[next] == '\n')
                    ++next;
            } else {
                lastWasCr_ = true;
            }
        }
        bool blank = end == lineStart_;
        if (!blank)
            processLine(std::string_view(raw_).substr(lineStart_, end - lineStart_));
        lineStart_ = scanPos_ = next;
        if (blank) {
            // With a trailing '\r' the block's raw bytes end only once we know
            // whether a '\n' follows.
            if (lastWasCr_)
                pendingDispatch_ = true;
            else if (lineStart_ - blockStart_ > maxEventBytes_)
                return tooLarge(); // a whole oversized event in one chunk
            else
                dispatchBlock();
        }
    }
    if (blockStart_ > 0 && !pendingDispatch_) {
        raw_.erase(0, blockStart_);
        lineStart_ -= blockStart_;
        scanPos_ -= blockStart_;
        blockStart_ = 0;
    }
    if (raw_.size() - blockStart_ > maxEventBytes_)
        return tooLarge();
    return {};
}

Error SseParser::tooLarge() {
    // Fail the same way however the bytes were split, and leave finish() an empty tail.
    failed_ = true;
    raw_.clear();
    name_.clear();
    data_.clear();
    blockStart_ = lineStart_ = scanPos_ = 0;
    lastWasCr_ = pendingDispatch_ = hasData_ = false;
    return Error{ErrorCode::ParseError,
                 "an event is larger than " + std::to_string(maxEventBytes_) + " bytes"};
}

void SseParser::processLine(std::string_view line) {
    if (line.front() == ':')
        return; // comment
    std::size_t colon = line.find(':');
    std::string_view field = line.substr(0, colon);
    std::string_view value =
        colon == std::string_view::npos ? std::string_view{} : line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ')
        value.remove_prefix(1);
    if (field == "event") {
        name_.assign(value);
    } else if (field == "data") {
        data_.append(value);
        data_.push_back('\n');
        hasData_ = true;
    }
    // "id", "retry" and unknown fields are ignored.
}

void SseParser::dispatchBlock() {
    pendingDispatch_ = false;
    if (hasData_)
        data_.pop_back(); // the last line's '\n'
    SseEvent ev;
    ev.name = name_.empty() ? std::string_view("message") : std::string_view(name_);
    ev.data = data_;
    ev.raw = std::string_view(raw_).substr(blockStart_, lineStart_ - blockStart_);
    ev.hasData = hasData_;
    handler_(ev);
    blockStart_ = lineStart_;
    name_.clear();
    data_.clear();
    hasData_ = false;
}

} // namespace trollproxy
