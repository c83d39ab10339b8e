// Fuzz target: the SSE parser gives the same events however the bytes are split, and bounds event
// size.
//
// Input layout: byte 0 picks the event-size bound and how many cuts to make, byte 1 seeds
// the cut positions; the rest is the stream. The same bytes are parsed whole, in random
// pieces and (when short) byte by byte; any difference aborts.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "trollproxy/sse.hpp"

using trollproxy::SseEvent;
using trollproxy::SseParser;

namespace {

struct Seen {
    std::string name, data, raw;
    bool hasData;
    bool operator==(const Seen&) const = default;
};

struct Outcome {
    std::vector<Seen> events;
    bool failed = false;
    std::string tail;
    bool operator==(const Outcome&) const = default;
};

void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "fuzz_sse: invariant violated: %s\n", what);
        std::abort();
    }
}

// Feeds the pieces [0,cuts[0]), [cuts[0],cuts[1]), ..., [cuts.back(),end).
Outcome parse(std::string_view bytes, std::size_t maxBytes, const std::vector<std::size_t>& cuts) {
    Outcome o;
    SseParser p(
        [&](const SseEvent& e) {
            o.events.push_back(
                {std::string(e.name), std::string(e.data), std::string(e.raw), e.hasData});
        },
        maxBytes);
    std::size_t prev = 0;
    for (std::size_t i = 0; i <= cuts.size() && !o.failed; ++i) {
        std::size_t end = i < cuts.size() ? cuts[i] : bytes.size();
        if (!p.feed(bytes.substr(prev, end - prev)))
            o.failed = true;
        prev = end;
    }
    if (o.failed) {
        std::size_t before = o.events.size();
        require(!p.feed("data: x\n\n"), "a failed parser accepts more bytes");
        require(o.events.size() == before, "a failed parser dispatches events");
    }
    o.tail = std::string(p.finish());
    return o;
}

std::uint32_t nextRandom(std::uint32_t& s) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return s;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2)
        return 0;
    static const std::size_t kBounds[] = {1, 8, 24, 64, 100, 256, 4096, 8 * 1024 * 1024};
    const std::size_t maxBytes = kBounds[data[0] & 7];
    std::string_view bytes(reinterpret_cast<const char*>(data) + 2, size - 2);

    Outcome whole = parse(bytes, maxBytes, {});

    // What the parser promises whatever the split: bounded events, nothing lost.
    for (const Seen& e : whole.events) {
        require(e.raw.size() <= maxBytes, "a dispatched event is larger than the bound");
        require(e.hasData || e.data.empty(), "an event without data lines has data");
        require(!e.name.empty(), "an event without a name");
    }
    if (!whole.failed) {
        std::string joined;
        for (const Seen& e : whole.events)
            joined += e.raw;
        require(joined + whole.tail == bytes,
                "the raw bytes of events and tail differ from the input");
        require(whole.tail.size() <= maxBytes, "the unterminated tail is larger than the bound");
    } else {
        require(whole.tail.empty(), "a failed parser hands back a tail");
    }

    // Random pieces: 1..32 cuts at positions seeded by byte 1.
    if (bytes.size() > 1) {
        std::uint32_t seed = 0x9e3779b9u ^ (std::uint32_t{data[1]} << 8) ^ data[0];
        std::size_t n = 1 + ((data[0] >> 3) & 31);
        std::vector<std::size_t> cuts;
        for (std::size_t i = 0; i < n; ++i)
            cuts.push_back(1 + nextRandom(seed) % (bytes.size() - 1));
        std::sort(cuts.begin(), cuts.end());
        cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
        require(parse(bytes, maxBytes, cuts) == whole,
                "random pieces give other events than the whole");
    }
    // Byte by byte, for inputs short enough to keep the target fast.
    if (bytes.size() > 1 && bytes.size() <= 4096) {
        std::vector<std::size_t> every;
        for (std::size_t i = 1; i < bytes.size(); ++i)
            every.push_back(i);
        require(parse(bytes, maxBytes, every) == whole,
                "byte-by-byte feeding gives other events than the whole");
    }
    return 0;
}
