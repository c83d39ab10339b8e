// Tests of usage extraction from the providers' real answer shapes.
#include <doctest/doctest.h>

#include "trollproxy/sse.hpp"
#include "trollproxy/usage.hpp"

using namespace trollproxy;

TEST_CASE("Anthropic message usage: input excludes both cache counters") {
    auto u = usageFromBody(ApiFormat::Anthropic, R"({"id":"msg_01","type":"message","role":"assistant",
      "model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn",
      "stop_sequence":null,"usage":{"input_tokens":1000,"cache_creation_input_tokens":2000,
      "cache_read_input_tokens":10000,"output_tokens":500,"service_tier":"standard"}})");
    REQUIRE(u);
    CHECK(*u == Usage{1000, 2000, 10000, 500, false});
}

TEST_CASE("OpenAI usage: cached tokens are inside prompt_tokens") {
    auto u = usageFromBody(ApiFormat::OpenAI, R"({"id":"chatcmpl-1","object":"chat.completion","created":1,
      "model":"gpt-5.1","choices":[{"index":0,"message":{"role":"assistant","content":"Hi","refusal":null},
      "logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":11000,"completion_tokens":500,
      "total_tokens":11500,"prompt_tokens_details":{"cached_tokens":10000,"audio_tokens":0},
      "completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}}})");
    REQUIRE(u);
    CHECK(*u == Usage{1000, 0, 10000, 500, false});
}

TEST_CASE("LiteLLM usage: cache reads counted once, cache writes taken out of prompt_tokens") {
    auto u = usageFromBody(ApiFormat::OpenAI, R"({"usage":{"prompt_tokens":13000,"completion_tokens":500,
      "total_tokens":13500,"prompt_tokens_details":{"cached_tokens":10000},
      "cache_creation_input_tokens":2000,"cache_read_input_tokens":10000}})");
    REQUIRE(u);
    CHECK(*u == Usage{1000, 2000, 10000, 500, false});
    // Inconsistent numbers never go negative.
    auto odd = usageFromBody(ApiFormat::OpenAI, R"({"usage":{"prompt_tokens":5,"completion_tokens":1,
      "cache_read_input_tokens":10}})");
    REQUIRE(odd);
    CHECK(odd->uncachedInput == 0);
}

TEST_CASE("bodies without usage, and malformed ones") {
    CHECK(usageFromBody(ApiFormat::OpenAI, R"({"error":{"message":"x","type":"y"}})").error().code ==
          ErrorCode::NotFound);
    CHECK(usageFromBody(ApiFormat::Anthropic, R"({"type":"error","error":{"type":"overloaded_error"}})")
              .error().code == ErrorCode::NotFound);
    CHECK(usageFromBody(ApiFormat::OpenAI, "{\"usage\":").error().code == ErrorCode::ParseError);
    auto neg = usageFromBody(ApiFormat::Anthropic, R"({"usage":{"input_tokens":-5,"output_tokens":"x"}})");
    REQUIRE(neg);
    CHECK(neg->uncachedInput == 0);
    CHECK(neg->output == 0);
}

TEST_CASE("an Anthropic stream: latest cumulative values win, never summed") {
    StreamUsage s(ApiFormat::Anthropic);
    CHECK(s.onEvent("message_start", R"({"type":"message_start","message":{"id":"m","usage":{"input_tokens":25,
      "cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":1}}})"));
    CHECK_FALSE(s.onEvent("content_block_delta",
                          R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"abcd"}})"));
    CHECK(s.onEvent("message_delta", R"({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}})"));
    CHECK(s.onEvent("message_delta", R"({"type":"message_delta","delta":{},"usage":{"input_tokens":25,
      "cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":20}})"));
    CHECK_FALSE(s.onEvent("message_stop", R"({"type":"message_stop"})"));
    CHECK(s.reported());
    CHECK(s.usage() == Usage{25, 100, 2000, 20, false});
    CHECK(s.textChars() == 4);
}

TEST_CASE("an OpenAI stream: usage from the final chunk only") {
    StreamUsage s(ApiFormat::OpenAI);
    CHECK_FALSE(s.onEvent("message", R"({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,
      "delta":{"role":"assistant","content":"Hello"},"finish_reason":null}],"usage":null})"));
    CHECK_FALSE(s.onEvent("message", R"({"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,
      "function":{"arguments":"{\"a\":"}}]},"finish_reason":null}]})"));
    CHECK_FALSE(s.reported());
    CHECK(s.onEvent("message", R"({"id":"c","object":"chat.completion.chunk","choices":[],
      "usage":{"prompt_tokens":120,"completion_tokens":7,"total_tokens":127,"prompt_tokens_details":{"cached_tokens":100}}})"));
    CHECK_FALSE(s.onEvent("message", "[DONE]"));
    CHECK(s.usage() == Usage{20, 0, 100, 7, false});
    CHECK(s.textChars() == 5 + 5);
}

TEST_CASE("counts above 9e15 are not believed, so nothing overflows (found by fuzz_usage)") {
    auto u = usageFromBody(ApiFormat::OpenAI, R"({"usage":{"prompt_tokens":0,"completion_tokens":3,
      "cache_read_input_tokens":9223372036854775807,"cache_creation_input_tokens":9223372036854775807}})");
    REQUIRE(u);
    CHECK(*u == Usage{0, 0, 0, 3, false});
    auto a = usageFromBody(
        ApiFormat::Anthropic,
        R"({"usage":{"input_tokens":9000000000000001,"output_tokens":9000000000000000}})");
    REQUIRE(a);
    CHECK(*a == Usage{0, 0, 0, 9'000'000'000'000'000, false});
}
