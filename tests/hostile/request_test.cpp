// Hostile requests: duplicate keys behind escapes (bill one model, serve another),
// and holds that must cover what the request allows (max_tokens, n).
#include <doctest/doctest.h>
#include <simdjson.h>

#include "hostile_stack.hpp"

using namespace hostile;

namespace {

const char* kMessages = R"("messages":[{"role":"user","content":"Hello there"}])";

void expectRefusal(const harness::RawResponse& r, bool anthropic, const std::string& words) {
    CHECK(r.status == 400);
    if (anthropic)
        CHECK(r.body.find(R"({"type":"error","error":{)") == 0);
    else
        CHECK(r.body.find(R"({"error":{"message":)") == 0);
    CHECK(containsNoCase(errorMessage(r.body), words));
}

} // namespace

TEST_CASE("duplicate keys, compared with escapes decoded, are refused before the upstream") {
    Stack s;
    std::string key = s.user("mallory", "10");
    Books books(s, "mallory");
    const std::string m = kMessages;
    struct Case {
        const char* what;
        std::string fields; // the body without its braces
    };
    std::vector<Case> cases{
        {"model, escaped", R"("model":"cheap-model","mod\u0065l":"gpt-5.1",)" + m},
        {"model, raw", R"("model":"cheap-model","model":"gpt-5.1",)" + m},
        {"model, every letter escaped",
         R"("\u006d\u006f\u0064\u0065\u006c":"cheap-model","model":"gpt-5.1",)" + m},
        {"model, upper-case hex", R"("model":"cheap-model","mode\u006C":"gpt-5.1",)" + m},
        {"stream", R"("model":"m","stream":false,"str\u0065am":true,)" + m},
        {"max_tokens", R"("model":"m","max_tokens":1,"max_tokens":100000,)" + m},
        {"max_tokens, escaped", R"("model":"m","max_tokens":1,"max_tok\u0065ns":100000,)" + m},
        {"n, escaped", R"("model":"m","n":1,"\u006e":50,)" + m},
        {"messages", R"("model":"m","messages":[],)" + m},
        {"stream_options",
         R"("model":"m","stream":true,"stream_options":{"include_usage":false,"include_usage":true},)" +
             m},
        {"stream_options, escaped",
         R"("model":"m","stream":true,"stream_options":{"include_usage":true,"include_us\u0061ge":false},)" +
             m},
    };
    for (const auto& c : cases) {
        for (bool anthropic : {false, true}) {
            CAPTURE(std::string(c.what));
            CAPTURE(anthropic);
            // Anthropic needs max_tokens; the max_tokens cases carry their own.
            std::string body =
                "{" + c.fields +
                (anthropic && c.fields.find("max_tok") == std::string::npos ? R"(,"max_tokens":64)"
                                                                            : "") +
                "}";
            auto r = call(s, anthropic ? "/v1/messages" : "/v1/chat/completions", body, key);
            expectRefusal(r, anthropic, "duplicate key");
        }
    }
    CHECK(s.upstreamCount() == 0);
    CHECK(books.spent().nanos == 0);
    books.check();
}

TEST_CASE("a key written with escapes alone is the key it decodes to") {
    Stack s;
    std::string key = s.user("alice", "10");
    Books books(s, "alice");
    for (bool anthropic : {false, true}) {
        CAPTURE(anthropic);
        std::string body = std::string(R"({"mod\u0065l":"aliased",)") + kMessages +
                           (anthropic ? R"(,"max_tokens":64})" : "}");
        auto r = call(s, anthropic ? "/v1/messages" : "/v1/chat/completions", body, key,
                      {{"x-fake-usage", "100,10,0,0"}});
        CHECK(r.status == 200);
        // The upstream read (and answered for) the upstream id of the model billed.
        simdjson::dom::parser parser;
        simdjson::dom::element doc;
        std::string_view model;
        REQUIRE(!parser.parse(r.body).get(doc));
        CHECK(!doc["model"].get_string().get(model));
        CHECK(model == "aliased-upstream");
        CHECK(r.headers["x-trollproxy-cost"] == priceM(100, 10).toString());
    }
    books.check();
}

TEST_CASE("n must be an integer from 1 to 128") {
    Stack s;
    std::string key = s.user("nick", "100");
    Books books(s, "nick");
    for (const char* n :
         {"0", "129", "-1", "1.5", "\"2\"", "true", "[1]", "1e400", "100000000000000000000"}) {
        CAPTURE(n);
        auto r = call(s, "/v1/chat/completions", chatBody(false, std::string(R"(,"n":)") + n), key);
        expectRefusal(r, false, ""); // the wording is the proxy's
    }
    CHECK(s.upstreamCount() == 0);
    auto ok = call(s, "/v1/chat/completions", chatBody(false, R"(,"n":128,"max_tokens":10)"), key);
    CHECK(ok.status == 200);
    books.check();
}

TEST_CASE("the hold covers n answers: a balance that covers n=1 does not cover n=50") {
    Stack s;
    for (bool explicitLimit : {true, false}) {
        CAPTURE(explicitLimit);
        // Same length, so the input part of the two holds is the same.
        std::string limit = explicitLimit ? R"(,"max_tokens":1000)" : "";
        std::string one = chatBody(false, limit + R"(,"n": 1)");
        std::string fifty = chatBody(false, limit + R"(,"n":50)");
        REQUIRE(one.size() == fifty.size());
        Money h1 = probeHold(s, "/v1/chat/completions", one);
        Money h50 = probeHold(s, "/v1/chat/completions", fifty);
        REQUIRE(h1.nanos > 0);
        // 49 more answers of up to 1000 tokens (max_tokens, or default_max_output_tokens) at 2
        // USD/Mtok.
        CHECK((h50 - h1).toString() == Money{49LL * 1000 * 2000}.toString());

        std::string name = explicitLimit ? "nina" : "noel";
        std::string key = s.user(name, (h1 + Money{(h50 - h1).nanos / 2}).toString());
        Books books(s, name);
        std::int64_t before = s.upstreamCount();
        auto r50 = call(s, "/v1/chat/completions", fifty, key);
        CHECK(r50.status == 402);
        CHECK(s.upstreamCount() == before);
        auto r1 = call(s, "/v1/chat/completions", one, key);
        CHECK(r1.status == 200);
        books.check();
    }
}

TEST_CASE("the hold takes the largest of max_tokens, max_completion_tokens and max_output_tokens") {
    Stack s;
    for (bool anthropic : {false, true}) {
        CAPTURE(anthropic);
        const char* path = anthropic ? "/v1/messages" : "/v1/chat/completions";
        // Same length each; only the largest limit differs (100000 against 1).
        std::string small =
            std::string("{\"model\":\"m\",") + kMessages +
            R"(,"max_tokens":1,"max_completion_tokens":     1,"max_output_tokens":1})";
        for (std::string big :
             {std::string(R"("max_tokens":1,"max_completion_tokens":100000,"max_output_tokens":1)"),
              std::string(R"("max_tokens":1,"max_completion_tokens":1,"max_output_tokens":100000)"),
              std::string(
                  R"("max_tokens":100000,"max_completion_tokens":1,"max_output_tokens":1)")}) {
            CAPTURE(big);
            std::string body = std::string("{\"model\":\"m\",") + kMessages + "," + big + "}";
            REQUIRE(body.size() == small.size());
            Money hSmall = probeHold(s, path, small);
            Money hBig = probeHold(s, path, body);
            REQUIRE(hSmall.nanos > 0);
            CHECK((hBig - hSmall).toString() == Money{99999LL * 2000}.toString());
        }
    }
    CHECK(s.upstreamCount() == 0);
    CHECK(harness::get(s.port(), "/health").status == 200);
}
