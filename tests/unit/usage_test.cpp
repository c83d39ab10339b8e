// Tests of usage extraction from the providers' real answer shapes.
#include <doctest/doctest.h>

#include "trollproxy/pricing.hpp"
#include "trollproxy/sse.hpp"
#include "trollproxy/usage.hpp"

using namespace trollproxy;

TEST_CASE("Anthropic message usage: input excludes both cache counters") {
    auto u =
        usageFromBody(ApiFormat::Anthropic, R"({"id":"msg_01","type":"message","role":"assistant",
      "model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn",
      "stop_sequence":null,"usage":{"input_tokens":1000,"cache_creation_input_tokens":2000,
      "cache_read_input_tokens":10000,"output_tokens":500,"service_tier":"standard"}})");
    REQUIRE(u);
    CHECK(*u == Usage{1000, 2000, 10000, 500, false});
}

TEST_CASE("OpenAI usage: cached tokens are inside prompt_tokens") {
    auto u = usageFromBody(ApiFormat::OpenAI,
                           R"({"id":"chatcmpl-1","object":"chat.completion","created":1,
      "model":"gpt-5.1","choices":[{"index":0,"message":{"role":"assistant","content":"Hi","refusal":null},
      "logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":11000,"completion_tokens":500,
      "total_tokens":11500,"prompt_tokens_details":{"cached_tokens":10000,"audio_tokens":0},
      "completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}}})");
    REQUIRE(u);
    CHECK(*u == Usage{1000, 0, 10000, 500, false});
}

TEST_CASE("LiteLLM usage: cache reads counted once, cache writes taken out of prompt_tokens") {
    auto u =
        usageFromBody(ApiFormat::OpenAI, R"({"usage":{"prompt_tokens":13000,"completion_tokens":500,
      "total_tokens":13500,"prompt_tokens_details":{"cached_tokens":10000},
      "cache_creation_input_tokens":2000,"cache_read_input_tokens":10000}})");
    REQUIRE(u);
    CHECK(*u == Usage{1000, 2000, 10000, 500, false});
    // Reads and writes that are each within the prompt never make input negative.
    auto odd =
        usageFromBody(ApiFormat::OpenAI, R"({"usage":{"prompt_tokens":5,"completion_tokens":1,
      "cache_read_input_tokens":4,"cache_creation_input_tokens":4}})");
    REQUIRE(odd);
    CHECK(odd->uncachedInput == 0);
}

TEST_CASE("bodies without usage, and malformed ones") {
    CHECK(
        usageFromBody(ApiFormat::OpenAI, R"({"error":{"message":"x","type":"y"}})").error().code ==
        ErrorCode::NotFound);
    CHECK(usageFromBody(ApiFormat::Anthropic,
                        R"({"type":"error","error":{"type":"overloaded_error"}})")
              .error()
              .code == ErrorCode::NotFound);
    CHECK(usageFromBody(ApiFormat::OpenAI, "{\"usage\":").error().code == ErrorCode::ParseError);
}

TEST_CASE("usage that is present but not believable is invalid, never zero") {
    const char* openai[] = {
        R"({"usage":{"prompt_tokens":-5,"completion_tokens":3}})",
        R"({"usage":{"prompt_tokens":5,"completion_tokens":"3"}})",
        R"({"usage":{"prompt_tokens":5,"completion_tokens":null}})",
        R"({"usage":{"prompt_tokens":5}})",
        R"({"usage":{}})",
        R"({"usage":{"prompt_tokens":1e300,"completion_tokens":3}})",
        R"({"usage":{"prompt_tokens":9000000000000001,"completion_tokens":3}})",
        R"({"usage":{"prompt_tokens":5,"completion_tokens":2.5}})",
        R"({"usage":{"prompt_tokens":100,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":1000000}}})",
        R"({"usage":{"prompt_tokens":100,"completion_tokens":3,"cache_read_input_tokens":101}})",
        R"({"usage":{"prompt_tokens":100,"completion_tokens":3,"cache_creation_input_tokens":-1}})",
        R"({"usage":{"prompt_tokens":100,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":"x"}}})",
    };
    for (const char* body : openai) {
        CAPTURE(body);
        auto u = usageFromBody(ApiFormat::OpenAI, body);
        REQUIRE_FALSE(u);
        CHECK(u.error().code == ErrorCode::InvalidArgument);
    }
    const char* anthropic[] = {
        R"({"usage":{"input_tokens":-5,"output_tokens":3}})",
        R"({"usage":{"input_tokens":5,"output_tokens":"x"}})",
        R"({"usage":{"input_tokens":5}})",
        R"({"usage":{}})",
        R"({"usage":{"input_tokens":5,"output_tokens":3,"cache_read_input_tokens":1e300}})",
    };
    for (const char* body : anthropic) {
        CAPTURE(body);
        auto u = usageFromBody(ApiFormat::Anthropic, body);
        REQUIRE_FALSE(u);
        CHECK(u.error().code == ErrorCode::InvalidArgument);
    }
    // Integral doubles and explicit nulls of optional details are fine.
    auto d =
        usageFromBody(ApiFormat::OpenAI, R"({"usage":{"prompt_tokens":10.0,"completion_tokens":3,
      "prompt_tokens_details":null,"cache_creation_input_tokens":null}})");
    REQUIRE(d);
    CHECK(*d == Usage{10, 0, 0, 3, false});
}

TEST_CASE("a stream's invalid usage is flagged; usage followed by content is not final") {
    StreamUsage s(ApiFormat::OpenAI);
    CHECK(s.onEvent("message",
                    R"({"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}})"));
    CHECK(s.reported());
    CHECK(s.charsAfterUsage() == 0);
    CHECK_FALSE(s.onEvent("message", R"({"choices":[{"delta":{"content":"abcdefgh"}}]})"));
    CHECK_FALSE(s.onEvent("message", R"({"choices":[{"delta":{"refusal":"no"}}]})"));
    CHECK(s.charsAfterUsage() == 10);
    CHECK_FALSE(s.invalid());
    CHECK(s.onEvent("message",
                    R"({"choices":[],"usage":{"prompt_tokens":"1","completion_tokens":1}})"));
    CHECK(s.invalid());
    CHECK(s.onEvent("message", R"({"choices":[],"usage":"lots"})"));

    StreamUsage a(ApiFormat::Anthropic);
    CHECK(a.onEvent(
        "message_start",
        R"({"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}})"));
    CHECK(a.onEvent("message_delta", R"({"type":"message_delta","usage":{"output_tokens":-3}})"));
    CHECK(a.invalid());
    CHECK(a.usage() == Usage{5, 0, 0, 1, false});
}

TEST_CASE("an Anthropic stream: latest cumulative values win, never summed") {
    StreamUsage s(ApiFormat::Anthropic);
    CHECK(s.onEvent("message_start",
                    R"({"type":"message_start","message":{"id":"m","usage":{"input_tokens":25,
      "cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":1}}})"));
    CHECK_FALSE(s.onEvent(
        "content_block_delta",
        R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"abcd"}})"));
    CHECK(s.onEvent(
        "message_delta",
        R"({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}})"));
    CHECK(
        s.onEvent("message_delta", R"({"type":"message_delta","delta":{},"usage":{"input_tokens":25,
      "cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":20}})"));
    CHECK_FALSE(s.onEvent("message_stop", R"({"type":"message_stop"})"));
    CHECK(s.reported());
    CHECK(s.usage() == Usage{25, 100, 2000, 20, false});
    CHECK(s.textChars() == 4);
}

TEST_CASE("an OpenAI stream: usage from the final chunk only") {
    StreamUsage s(ApiFormat::OpenAI);
    CHECK_FALSE(
        s.onEvent("message", R"({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,
      "delta":{"role":"assistant","content":"Hello"},"finish_reason":null}],"usage":null})"));
    CHECK_FALSE(
        s.onEvent("message", R"({"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,
      "function":{"arguments":"{\"a\":"}}]},"finish_reason":null}]})"));
    CHECK_FALSE(s.reported());
    CHECK(s.onEvent("message", R"({"id":"c","object":"chat.completion.chunk","choices":[],
      "usage":{"prompt_tokens":120,"completion_tokens":7,"total_tokens":127,"prompt_tokens_details":{"cached_tokens":100}}})"));
    CHECK_FALSE(s.onEvent("message", "[DONE]"));
    CHECK(s.usage() == Usage{20, 0, 100, 7, false});
    CHECK(s.textChars() == 5 + 5);
}

TEST_CASE("counts above 10^9 are not believed, so nothing overflows (found by fuzz_usage)") {
    auto u = usageFromBody(ApiFormat::OpenAI, R"({"usage":{"prompt_tokens":0,"completion_tokens":3,
      "cache_read_input_tokens":9223372036854775807,"cache_creation_input_tokens":9223372036854775807}})");
    CHECK_FALSE(u);
    auto a = usageFromBody(ApiFormat::Anthropic,
                           R"({"usage":{"input_tokens":1000000000,"output_tokens":1000000001}})");
    CHECK_FALSE(a);
    auto ok = usageFromBody(ApiFormat::Anthropic,
                            R"({"usage":{"input_tokens":1000000000,"output_tokens":1000000000}})");
    REQUIRE(ok);
    CHECK(*ok == Usage{1'000'000'000, 0, 0, 1'000'000'000, false});
}

TEST_CASE("Anthropic cache writes split by TTL; 1-hour writes priced apart") {
    auto u = usageFromBody(ApiFormat::Anthropic,
                           R"({"usage":{"input_tokens":10,"cache_creation_input_tokens":3000,
      "cache_read_input_tokens":0,"output_tokens":5,
      "cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000}}})");
    REQUIRE(u);
    CHECK(u->cacheWrite == 3000);
    CHECK(u->cacheWrite1h == 2000);
    // LiteLLM's OpenAI-shaped answer carries the same split.
    auto l =
        usageFromBody(ApiFormat::OpenAI, R"({"usage":{"prompt_tokens":3010,"completion_tokens":5,
      "cache_creation_input_tokens":3000,"prompt_tokens_details":{"cached_tokens":0,
      "cache_creation_token_details":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000}}}})");
    REQUIRE(l);
    CHECK(*l == Usage{10, 3000, 0, 5, false, 2000});
    CHECK_FALSE(usageFromBody(ApiFormat::Anthropic, R"({"usage":{"input_tokens":1,"output_tokens":1,
      "cache_creation":{"ephemeral_1h_input_tokens":-4}}})"));

    PriceTable p{*Money::parse("3"),   *Money::parse("15"),         *Money::parse("3.75"),
                 *Money::parse("0.3"), Factor{Money::kNanosPerUsd}, std::nullopt};
    // 1,000 5-minute writes at 3.75 + 2,000 1-hour writes at 2 x 3 = 0.00375 + 0.012.
    CHECK(priceUsage(p, Usage{0, 3000, 0, 0, false, 2000}) == *Money::parse("0.01575"));
    p.cacheWrite1h = *Money::parse("7");
    CHECK(priceUsage(p, Usage{0, 3000, 0, 0, false, 2000}) == *Money::parse("0.01775"));
}

TEST_CASE("Responses usage: cached inside input, reasoning inside output") {
    auto u = usageFromBody(ApiFormat::Responses,
                           R"({"id":"resp_1","object":"response","status":"completed",
      "usage":{"input_tokens":1200,"input_tokens_details":{"cached_tokens":1000},"output_tokens":300,
      "output_tokens_details":{"reasoning_tokens":200},"total_tokens":1500}})");
    REQUIRE(u);
    CHECK(*u == Usage{200, 0, 1000, 300, false});
    CHECK(responseIdFromBody(R"({"id":"resp_1","object":"response"})") == "resp_1");
    CHECK_FALSE(
        usageFromBody(ApiFormat::Responses, R"({"usage":{"input_tokens":10,"output_tokens":1,
      "input_tokens_details":{"cached_tokens":11}}})"));

    StreamUsage s(ApiFormat::Responses);
    CHECK_FALSE(
        s.onEvent("response.created",
                  R"({"type":"response.created","response":{"id":"resp_9","usage":null}})"));
    CHECK(s.responseId() == "resp_9");
    CHECK_FALSE(s.onEvent("response.output_text.delta",
                          R"({"type":"response.output_text.delta","delta":"Hello"})"));
    CHECK_FALSE(s.onEvent("response.reasoning_summary_text.delta",
                          R"({"type":"response.reasoning_summary_text.delta","delta":"abc"})"));
    CHECK(s.textChars() == 8);
    CHECK(s.onEvent("response.completed", R"({"type":"response.completed","response":{"id":"resp_9",
      "usage":{"input_tokens":50,"input_tokens_details":{"cached_tokens":0},"output_tokens":9,
      "output_tokens_details":{"reasoning_tokens":4},"total_tokens":59}}})"));
    CHECK(s.reported());
    CHECK(s.usage() == Usage{50, 0, 0, 9, false});
    StreamUsage inc(ApiFormat::Responses);
    CHECK(inc.onEvent("response.incomplete", R"({"type":"response.incomplete","response":{"id":"r",
      "usage":{"input_tokens":5,"output_tokens":2}}})"));
    CHECK(inc.usage() == Usage{5, 0, 0, 2, false});
}
