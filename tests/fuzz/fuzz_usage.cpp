// Fuzz target: usage extraction from any answer body or event stream never crashes, never goes
// negative.
//
// The input is used as a whole answer body in both API formats, as one stream event's
// data, and as an SSE stream whose events go through StreamUsage. Every usage found is
// priced at the highest prices a config accepts, as the proxy would bill it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "trollproxy/pricing.hpp"
#include "trollproxy/sse.hpp"
#include "trollproxy/usage.hpp"

using namespace trollproxy;

namespace {

void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "fuzz_usage: invariant violated: %s\n", what);
        std::abort();
    }
}

// Config's limits: $1M per Mtok, multiplier 1000.
const PriceTable kMaxPrices{
    Money{1'000'000 * Money::kNanosPerUsd}, Money{1'000'000 * Money::kNanosPerUsd},
    Money{1'000'000 * Money::kNanosPerUsd}, Money{1'000'000 * Money::kNanosPerUsd},
    Factor{1000 * Money::kNanosPerUsd}};

void checkUsage(const Usage& u) {
    require(u.uncachedInput >= 0 && u.cacheWrite >= 0 && u.cacheRead >= 0 && u.output >= 0,
            "a negative token count");
    require(u.totalInput() >= 0, "a negative total input");
    require(u.uncachedInput <= 1'000'000'000 && u.cacheWrite <= 1'000'000'000 &&
                u.cacheRead <= 1'000'000'000 && u.output <= 1'000'000'000,
            "a count above the believable bound");
    require(priceUsage(kMaxPrices, u).nanos >= 0, "a negative cost");
}

void checkStream(const StreamUsage& s) {
    require(s.textChars() >= 0, "a negative text length");
    if (s.reported())
        checkUsage(s.usage());
    else
        require(s.usage() == Usage{}, "usage without a report");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view bytes(reinterpret_cast<const char*>(data), size);

    Result<Usage> first[2] = {usageFromBody(ApiFormat::OpenAI, bytes),
                              usageFromBody(ApiFormat::Anthropic, bytes)};
    for (const auto& r : first) {
        if (r)
            checkUsage(*r);
        else
            require(r.error().code == ErrorCode::ParseError ||
                        r.error().code == ErrorCode::NotFound ||
                        r.error().code == ErrorCode::InvalidArgument,
                    "an unexpected error code");
    }

    StreamUsage openai(ApiFormat::OpenAI), anthropic(ApiFormat::Anthropic);
    SseParser parser([&](const SseEvent& e) {
        if (openai.onEvent(e.name, e.data))
            require(openai.reported() || openai.invalid(),
                    "usage seen but neither reported nor invalid");
        if (anthropic.onEvent(e.name, e.data))
            require(anthropic.reported() || anthropic.invalid(),
                    "usage seen but neither reported nor invalid");
        require(openai.charsAfterUsage() >= 0 && anthropic.charsAfterUsage() >= 0,
                "negative text after usage");
    });
    (void)parser.feed(bytes);
    checkStream(openai);
    checkStream(anthropic);

    StreamUsage single[2] = {StreamUsage(ApiFormat::OpenAI), StreamUsage(ApiFormat::Anthropic)};
    for (auto& s : single) {
        s.onEvent("message_delta", bytes);
        checkStream(s);
    }

    // The parser is reused across calls: the same body must read the same again.
    Result<Usage> again[2] = {usageFromBody(ApiFormat::OpenAI, bytes),
                              usageFromBody(ApiFormat::Anthropic, bytes)};
    for (int i = 0; i < 2; ++i) {
        require(first[i].ok() == again[i].ok(), "a second read of the same body differs");
        if (first[i])
            require(*first[i] == *again[i], "a second read of the same body differs");
    }
    return 0;
}
