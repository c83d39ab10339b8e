// Tests of the incremental SSE parser: any split of the bytes gives the same events.
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "trollproxy/sse.hpp"

using namespace trollproxy;

namespace {

struct Seen {
    std::string name, data, raw;
    bool hasData;
    bool operator==(const Seen&) const = default;
};

std::vector<Seen> parseInPieces(const std::string& bytes, const std::vector<std::size_t>& cuts) {
    std::vector<Seen> out;
    SseParser p([&](const SseEvent& e) {
        out.push_back({std::string(e.name), std::string(e.data), std::string(e.raw), e.hasData});
    });
    std::size_t prev = 0;
    for (std::size_t c : cuts) {
        REQUIRE(p.feed(bytes.substr(prev, c - prev)));
        prev = c;
    }
    REQUIRE(p.feed(bytes.substr(prev)));
    return out;
}

// An Anthropic stream as the API sends it (with a ping and UTF-8 text).
const std::string kAnthropic = "event: message_start\n"
                               "data: "
                               "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":"
                               "\"message\",\"role\":\"assistant\","
                               "\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":"
                               "null,\"usage\":{\"input_tokens\":25,"
                               "\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":"
                               "2000,\"output_tokens\":1}}}\n\n"
                               "event: ping\ndata: {\"type\": \"ping\"}\n\n"
                               "event: content_block_delta\n"
                               "data: "
                               "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
                               "\"text_delta\",\"text\":\"h\xc3\xa9llo\"}}\n\n"
                               "event: message_delta\n"
                               "data: "
                               "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_"
                               "turn\"},\"usage\":{\"output_tokens\":15}}\n\n"
                               "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

} // namespace

TEST_CASE("events, names, multi-line data, comments") {
    auto ev = parseInPieces(
        ": keep-alive\n\nevent: a\ndata: x\ndata:  y\nid: 7\nretry: 10\n\ndata\n\ndata: [DONE]\n\n",
        {});
    REQUIRE(ev.size() == 4);
    CHECK_FALSE(ev[0].hasData);
    CHECK(ev[0].raw == ": keep-alive\n\n");
    CHECK(ev[1] == Seen{"a", "x\n y", "event: a\ndata: x\ndata:  y\nid: 7\nretry: 10\n\n", true});
    CHECK(ev[2] == Seen{"message", "", "data\n\n", true});
    CHECK(ev[3].data == "[DONE]");
}

TEST_CASE("CRLF and CR line endings") {
    auto crlf = parseInPieces("event: e\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n", {});
    REQUIRE(crlf.size() == 2);
    CHECK(crlf[0] == Seen{"e", "1", "event: e\r\ndata: 1\r\n\r\n", true});
    auto cr = parseInPieces("data: 1\r\rdata: 2\r\r", {});
    REQUIRE(cr.size() == 1); // the last blank '\r' might still be followed by '\n'
    CHECK(cr[0].data == "1");
}

TEST_CASE("a split at every byte offset, and byte by byte, gives the same events") {
    for (const std::string& stream :
         {kAnthropic, std::string("data: a\r\n\r\n: c\r\n\r\ndata: b\r\ndata: c\r\n\r\n")}) {
        auto whole = parseInPieces(stream, {});
        REQUIRE(!whole.empty());
        std::string joined;
        for (const auto& e : whole)
            joined += e.raw;
        CHECK(joined == stream); // nothing lost
        for (std::size_t cut = 1; cut < stream.size(); ++cut) {
            CAPTURE(cut);
            CHECK(parseInPieces(stream, {cut}) == whole);
        }
        std::vector<std::size_t> every;
        for (std::size_t i = 1; i < stream.size(); ++i)
            every.push_back(i);
        CHECK(parseInPieces(stream, every) == whole);
    }
}

TEST_CASE("an oversized event is an error and memory stays bounded") {
    SseParser p([](const SseEvent&) {}, 1024);
    CHECK(p.feed("data: " + std::string(1000, 'x')));
    auto r = p.feed(std::string(100, 'y'));
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("larger than 1024") != std::string::npos);
    CHECK_FALSE(p.feed("\n\n"));
    // Many small events in one chunk are fine.
    std::string many;
    for (int i = 0; i < 1000; ++i)
        many += "data: " + std::to_string(i) + "\n\n";
    int n = 0;
    SseParser q([&](const SseEvent&) { ++n; }, 1024);
    CHECK(q.feed(many));
    CHECK(n == 1000);
}

TEST_CASE("an unterminated tail is not dispatched but handed back") {
    std::vector<Seen> ev;
    SseParser p([&](const SseEvent& e) {
        ev.push_back({std::string(e.name), std::string(e.data), std::string(e.raw), e.hasData});
    });
    CHECK(p.feed("data: 1\n\ndata: 2\n"));
    CHECK(ev.size() == 1);
    CHECK(p.finish() == "data: 2\n");
}

TEST_CASE("an oversized event fails even when it arrives whole in one chunk (found by fuzz_sse)") {
    const std::string stream =
        "data: 1\n\ndata: this event is longer than twenty-four bytes\n\ndata: 2\n\n";
    for (std::size_t cut : {std::size_t{0}, std::size_t{20}, stream.size() - 1}) {
        CAPTURE(cut);
        int n = 0;
        SseParser p([&](const SseEvent&) { ++n; }, 24);
        bool ok = p.feed(stream.substr(0, cut)).ok() && p.feed(stream.substr(cut)).ok();
        CHECK_FALSE(ok);
        CHECK(n == 1); // the event before it, however the bytes were split
        CHECK(p.finish().empty());
    }
}

TEST_CASE("finish() after a failure hands back nothing (found by fuzz_sse)") {
    SseParser p([](const SseEvent&) {}, 24);
    CHECK_FALSE(p.feed("data: 1\n\ndata: 0123456789012345678901234567\r\r"));
    CHECK(p.finish().empty()); // used to throw std::out_of_range
}
