// Bad input gets a clear 4xx in the caller's format, and the server keeps serving.
#include <doctest/doctest.h>

#include "harness.hpp"

using namespace harness;

namespace {

const char* kConfig = R"({
  "port": 8000,
  "endpoints": [
    {"name": "oai", "base_url": "UPSTREAM/v1/chat/completions"},
    {"name": "ant", "base_url": "UPSTREAM/v1/messages"}
  ],
  "models": [{"id": "m", "billing_upstream": "openhands", "input_price_per_mtok": 1}],
  "trollproxy": {"max_body_bytes": 65536}
})";

void expectError(const RawResponse& r, int status, bool anthropic) {
    CHECK(r.status == status);
    if (anthropic)
        CHECK(r.body.find(R"({"type":"error","error":{"type":")") == 0);
    else
        CHECK(r.body.find(R"({"error":{"message":")") == 0);
}

} // namespace

TEST_CASE("malformed and mistyped bodies") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    std::map<std::string, std::string> h{{"Authorization", "Bearer " + key}};
    struct Case {
        const char* what;
        std::string body;
        int status;
    };
    std::vector<Case> cases{
        {"malformed JSON", R"({"model": "m", "messages": [)", 400},
        {"not an object", R"(["m"])", 400},
        {"missing model", R"({"messages": []})", 400},
        {"model is a number", R"({"model": 5})", 400},
        {"stream is a string", R"({"model": "m", "stream": "yes"})", 400},
        {"max_tokens negative", R"({"model": "m", "max_tokens": -1})", 400},
        {"duplicate model", R"({"model": "m", "model": "other"})", 400},
        {"invalid UTF-8", std::string("{\"model\": \"m\", \"x\": \"\xff\xfe\"}"), 400},
        {"empty body", "", 400},
        {"huge body", R"({"model": "m", "pad": ")" + std::string(70000, 'a') + "\"}", 413},
    };
    for (const auto& c : cases) {
        for (bool anthropic : {false, true}) {
            CAPTURE(c.what);
            CAPTURE(anthropic);
            auto r = post(s.proxy->port(), anthropic ? "/v1/messages" : "/v1/chat/completions",
                          c.body, h);
            expectError(r, c.status, anthropic);
        }
    }
    // Anthropic requires max_tokens.
    expectError(post(s.proxy->port(), "/v1/messages", R"({"model": "m", "messages": []})", h), 400,
                true);
    CHECK(get(s.proxy->port(), "/health").status == 200);
    CHECK(s.balance("u").creditsNew == *trollproxy::Money::parse("10"));
}

TEST_CASE("broken requests at the HTTP level do not stop the server") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    // A header value with a bare CR.
    auto r = rawExchange(s.proxy->port(),
                         "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key +
                             "\r\nX-Evil: a\rb\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                         5);
    CHECK((r.status == 0 || (r.status >= 400 && r.status < 500)));
    // A body shorter than its Content-Length, then the client goes away.
    rawExchange(s.proxy->port(),
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                "500\r\nConnection: close\r\n\r\n{\"model\":",
                2);
    // Garbage instead of HTTP.
    static const char kGarbage[] = "\x16\x03\x01\x02\x00garbage\r\n\r\n"; // a NUL inside
    rawExchange(s.proxy->port(), std::string(kGarbage, sizeof kGarbage - 1), 2);
    // A request line with an unknown route.
    auto nf = get(s.proxy->port(), "/nope");
    CHECK(nf.status == 404);
    CHECK(get(s.proxy->port(), "/health").status == 200);
    auto ok = post(s.proxy->port(), "/v1/chat/completions", R"({"model":"m","messages":[]})",
                   {{"Authorization", "Bearer " + key}});
    CHECK(ok.status == 200);
}
