// Tests of reading and rewriting request bodies without re-encoding them.
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "proxy/request_body.hpp"

using namespace trollproxy;
using namespace trollproxy::internal;

namespace {
std::string rewrite(ApiFormat f, const std::string& body, const std::string& upstreamModel) {
    auto req = parseClientRequest(f, body);
    REQUIRE_MESSAGE(req.ok(), (req.ok() ? "" : req.error().message));
    return rewriteForUpstream(f, body, *req, upstreamModel);
}
} // namespace

TEST_CASE("only model changes; every other byte stays") {
    std::string body =
        "{ \"messages\": [{\"role\":\"user\",\"content\":\"x\"}],\n  \"model\" :\"m\", "
        "\"tools\":[{\"a\":1.50e3}], \"z\": null }";
    CHECK(rewrite(ApiFormat::OpenAI, body, "up/m-1") ==
          "{ \"messages\": [{\"role\":\"user\",\"content\":\"x\"}],\n  \"model\" :\"up/m-1\", "
          "\"tools\":[{\"a\":1.50e3}], \"z\": null }");
    CHECK(rewrite(ApiFormat::OpenAI, body, "m") == body);
    CHECK(rewrite(ApiFormat::OpenAI, R"({"model":"m"})", "a\"b") == R"({"model":"a\"b"})");
}

TEST_CASE("strings with escaped quotes and runs of backslashes end where JSON says") {
    // Texts (as JSON string contents) that end in runs of escaped backslashes or
    // in escaped quotes: the scanner must count the backslashes before each quote.
    const std::vector<std::string> texts = {
        R"(a\\)",    R"(\\\\)",       R"(x\"y)",     R"(\\\"q\\)",
        R"(\"\"\")", R"(\\\\\\\\\\)", R"(\"\\\\\")", std::string(70000, 'z') + R"(\")"};
    for (const std::string& text : texts) {
        CAPTURE(text);
        const std::string body =
            R"({"messages":[{"role":"user","content":")" + text + R"("}],"model":"m","n":1})";
        CHECK(rewrite(ApiFormat::OpenAI, body, "up") ==
              R"({"messages":[{"role":"user","content":")" + text + R"("}],"model":"up","n":1})");
    }
}

TEST_CASE("an OpenAI stream gets include_usage in every shape of stream_options") {
    CHECK(rewrite(ApiFormat::OpenAI, R"({"model":"m","stream":true})", "m") ==
          R"({"model":"m","stream":true,"stream_options":{"include_usage":true}})");
    CHECK(rewrite(ApiFormat::OpenAI, R"({"model":"m","stream":true,"stream_options":null})", "m") ==
          R"({"model":"m","stream":true,"stream_options":{"include_usage":true}})");
    CHECK(rewrite(ApiFormat::OpenAI, R"({"model":"m","stream":true,"stream_options":{}})", "m") ==
          R"({"model":"m","stream":true,"stream_options":{"include_usage":true}})");
    CHECK(rewrite(ApiFormat::OpenAI, R"({"model":"m","stream":true,"stream_options":{"x":1}})",
                  "m") ==
          R"({"model":"m","stream":true,"stream_options":{"include_usage":true,"x":1}})");
    CHECK(rewrite(ApiFormat::OpenAI,
                  R"({"model":"m","stream":true,"stream_options":{"include_usage": false}})",
                  "m") ==
          R"({"model":"m","stream":true,"stream_options":{"include_usage": true}})");
    std::string asked = R"({"model":"m","stream":true,"stream_options":{"include_usage":true}})";
    CHECK(rewrite(ApiFormat::OpenAI, asked, "m") == asked);
    CHECK(parseClientRequest(ApiFormat::OpenAI, asked)->clientAskedUsage);
    // Not a stream, or Anthropic: untouched.
    CHECK(rewrite(ApiFormat::OpenAI, R"({"model":"m"})", "m") == R"({"model":"m"})");
    CHECK(rewrite(ApiFormat::Anthropic, R"({"model":"m","max_tokens":1,"stream":true})", "m") ==
          R"({"model":"m","max_tokens":1,"stream":true})");
}

TEST_CASE("the fields the proxy reads are validated") {
    CHECK(parseClientRequest(ApiFormat::OpenAI, R"({"model":"m","max_completion_tokens":7})")
              ->maxOutputTokens == 7);
    CHECK(parseClientRequest(ApiFormat::OpenAI, R"({"model":"m"})")->maxOutputTokens == -1);
    CHECK(parseClientRequest(ApiFormat::OpenAI, R"({"model":"m","stream":null})")->stream == false);
    for (const char* bad :
         {"", "[]", "{", R"({"model":1})", R"({"model":""})", R"({"model":"m","stream":1})",
          R"({"model":"m","max_tokens":-1})", R"({"model":"m","max_tokens":1.5})",
          R"({"model":"m","stream_options":[]})", R"({"model":"m","model":"n"})",
          R"({"model":"m","n":0})", R"({"model":"m","n":129})", R"({"model":"m","n":"2"})"}) {
        CAPTURE(bad);
        CHECK_FALSE(parseClientRequest(ApiFormat::OpenAI, bad));
    }
    CHECK_FALSE(parseClientRequest(ApiFormat::Anthropic, R"({"model":"m"})"));
    auto bad = parseClientRequest(ApiFormat::OpenAI, "{\"model\":\"\xff\"}");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.find("UTF-8") != std::string::npos);
    auto where = parseClientRequest(ApiFormat::OpenAI, "{\"model\":\n\"m\",}");
    REQUIRE_FALSE(where);
    CHECK(where.error().message.find("line 2") != std::string::npos);
}

TEST_CASE("one meaning: keys compare after escapes are decoded, and duplicates are refused") {
    const char* dups[] = {
        R"({"model":"cheap","mod\u0065l":"dear"})",
        R"({"mod\u0065l":"cheap","model":"dear"})",
        R"({"model":"m","stream":false,"str\u0065am":true})",
        R"({"model":"m","max_tokens":1,"max_tokens":100000})",
        R"({"model":"m","max_tokens":1,"max_tok\u0065ns":100000})",
        R"({"model":"m","n":1,"\u006e":50})",
        R"({"model":"m","messages":[],"messages":[]})",
        R"({"model":"m","stream":true,"stream_options":{"include_usage":true,"include_\u0075sage":false}})",
        R"({"model":"m","\ud83d\ude00":1,"\ud83d\ude00":2})",
    };
    for (const char* body : dups) {
        CAPTURE(body);
        auto r = parseClientRequest(ApiFormat::OpenAI, body);
        REQUIRE_FALSE(r);
        CHECK(r.error().message.find("duplicate key") != std::string::npos);
    }
    // An escaped spelling alone is the same key, read and rewritten as such.
    auto req = parseClientRequest(ApiFormat::OpenAI,
                                  R"({"mod\u0065l":"m","\u006e":3,"max_tok\u0065ns":7})");
    REQUIRE(req);
    CHECK(req->model == "m");
    CHECK(req->choices == 3);
    CHECK(req->maxOutputTokens == 7);
    CHECK(rewrite(ApiFormat::OpenAI, R"({"mod\u0065l":"m"})", "up") == R"({"mod\u0065l":"up"})");
    // The largest output limit present bounds the answer.
    CHECK(parseClientRequest(ApiFormat::OpenAI,
                             R"({"model":"m","max_tokens":5,"max_completion_tokens":9})")
              ->maxOutputTokens == 9);
}

TEST_CASE("usage-only chunks are recognised") {
    CHECK(isUsageOnlyChunk(R"({"id":"x","choices":[],"usage":{"prompt_tokens":1}})"));
    CHECK_FALSE(
        isUsageOnlyChunk(R"({"id":"x","choices":[{"delta":{}}],"usage":{"prompt_tokens":1}})"));
    CHECK_FALSE(isUsageOnlyChunk(R"({"id":"x","choices":[],"usage":null})"));
    CHECK_FALSE(isUsageOnlyChunk("[DONE]"));
}
