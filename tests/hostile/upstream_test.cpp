// Hostile traffic between the proxy and the upstream: error texts that would set keys
// aside, upstreams that echo their key, and client headers meant for the upstream.
#include <set>

#include <doctest/doctest.h>

#include "hostile_stack.hpp"

using namespace hostile;

namespace {

const char* path(bool anthropic) {
    return anthropic ? "/v1/messages" : "/v1/chat/completions";
}

std::string body(bool anthropic) {
    return anthropic ? messagesBody(false) : chatBody(false);
}

// The Authorization headers of the last `n` requests the upstream saw.
std::vector<std::string> lastKeys(Stack& s, std::size_t n) {
    auto seen = s.upstreamRequests();
    std::vector<std::string> out;
    for (std::size_t i = seen.size() > n ? seen.size() - n : 0; i < seen.size(); ++i)
        out.push_back(seen[i].header("authorization"));
    return out;
}

} // namespace

TEST_CASE("a 400 that mentions a budget only in its text is relayed and sets no key aside") {
    Stack s("", "k1,k2");
    std::string a = s.user("a", "10"), b = s.user("b", "10");
    Books booksA(s, "a"), booksB(s, "b");
    for (bool anthropic : {false, true}) {
        CAPTURE(anthropic);
        std::string text = "Budget has been exceeded! Current cost: 10.5, Max budget: 10.0";
        std::string err =
            anthropic ? R"({"type":"error","error":{"type":"invalid_request_error","message":")" +
                            text + "\"}}"
                      : R"({"error":{"message":")" + text +
                            R"(","type":"invalid_request_error","param":null,"code":"400"}})";
        std::int64_t before = s.upstreamCount();
        auto r =
            call(s, path(anthropic), body(anthropic), a, {{"x-fake-error-json", "400:" + err}});
        CHECK(r.status == 400);
        CHECK(errorMessage(r.body) == text);
        CHECK(s.upstreamCount() == before + 1); // the request's fault: no other key tried
        // Another user is served, on both keys.
        for (int i = 0; i < 4; ++i)
            CHECK(call(s, path(anthropic), body(anthropic), b).status == 200);
        auto keys = lastKeys(s, 4);
        CHECK(std::set<std::string>(keys.begin(), keys.end()) ==
              std::set<std::string>{"Bearer k1", "Bearer k2"});
    }
    CHECK(booksA.spent().nanos == 0);
    booksA.check();
    booksB.check();
}

TEST_CASE(
    "structured signals set the key aside; the request is served on the next key, billed once") {
    struct Signal {
        const char* what;
        bool anthropic;
        std::string error; // STATUS:BODY
    };
    std::vector<Signal> signals{
        {"LiteLLM budget_exceeded", false,
         R"(400:{"error":{"message":"Budget has been exceeded! Current cost: 10.5, Max budget: 10.0","type":"budget_exceeded","param":null,"code":"400"}})"},
        {"LiteLLM budget_exceeded on /v1/messages", true,
         R"(400:{"error":{"message":"Budget has been exceeded!","type":"budget_exceeded","param":null,"code":"400"}})"},
        {"OpenAI insufficient_quota", false,
         R"(429:{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}})"},
        {"401", false,
         R"(401:{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}})"},
        {"402", false,
         R"(402:{"error":{"message":"Payment required","type":"billing_error","param":null,"code":null}})"},
        {"Anthropic 401", true,
         R"(401:{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}})"},
    };
    for (const auto& sig : signals) {
        CAPTURE(std::string(sig.what));
        Stack s("", "k1,k2");
        std::string key = s.user("u", "10");
        Books books(s, "u");
        auto r = call(s, path(sig.anthropic), body(sig.anthropic), key,
                      {{"x-fake-error-json", sig.error},
                       {"x-fake-error-key", "k1"},
                       {"x-fake-usage", "100,10,0,0"}});
        CHECK(r.status == 200);
        CHECK(r.headers["x-trollproxy-cost"] == priceM(100, 10).toString());
        auto first = lastKeys(s, 2);
        REQUIRE(first ==
                std::vector<std::string>{"Bearer k1", "Bearer k2"}); // k1 refused, k2 served
        for (int i = 0; i < 3; ++i)
            CHECK(call(s, path(sig.anthropic), body(sig.anthropic), key).status == 200);
        CHECK(lastKeys(s, 3) == std::vector<std::string>(3, "Bearer k2")); // k1 is set aside
        CHECK(s.ledger->usage("u", 10)->size() == 4);
        books.check();
    }
}

TEST_CASE("a 403 on one key moves the request to the next key, billed once") {
    Stack s("", "k1,k2");
    std::string key = s.user("u", "10");
    Books books(s, "u");
    auto r = call(
        s, path(false), body(false), key,
        {{"x-fake-error-json",
          R"(403:{"error":{"message":"Project does not have access to model m","type":"invalid_request_error","param":null,"code":"model_not_found"}})"},
         {"x-fake-error-key", "k1"},
         {"x-fake-usage", "100,10,0,0"}});
    CHECK(r.status == 200);
    CHECK(r.headers["x-trollproxy-cost"] == priceM(100, 10).toString());
    CHECK(lastKeys(s, 2) == std::vector<std::string>{"Bearer k1", "Bearer k2"});
    CHECK(s.ledger->usage("u", 10)->size() == 1);
    books.check();
}

TEST_CASE("one request sets aside at most one key") {
    Stack s("", "k1,k2,k3");
    std::string a = s.user("a", "10"), b = s.user("b", "10");
    Books booksA(s, "a"), booksB(s, "b");
    // Every key answers this request with a budget error: it follows the request.
    auto r = call(
        s, path(false), body(false), a,
        {{"x-fake-error-json",
          R"(400:{"error":{"message":"Budget has been exceeded!","type":"budget_exceeded","param":null,"code":"400"}})"}});
    CHECK(r.status != 200);
    CHECK(r.status >= 400);
    for (int i = 0; i < 3; ++i)
        CHECK(call(s, path(false), body(false), b).status == 200);
    auto keys = lastKeys(s, 3);
    CHECK(std::set<std::string>(keys.begin(), keys.end()) ==
          std::set<std::string>{"Bearer k2", "Bearer k3"});
    CHECK(booksA.spent().nanos == 0);
    booksA.check();
    booksB.check();
}

TEST_CASE("upstream error bodies never show an upstream key") {
    const std::string k1 = "sk-upstream-secret-1111", k2 = "sk-upstream-secret-2222";
    Stack s("", k1 + "," + k2);
    std::string key = s.user("u", "10");
    Books books(s, "u");
    for (bool anthropic : {false, true}) {
        CAPTURE(anthropic);
        auto echo = call(s, path(anthropic), body(anthropic), key, {{"x-fake-echo-auth", "1"}});
        CHECK(echo.status == 400);
        CHECK(isJson(echo.body));
        CHECK(echo.body.find("sk-upstream-secret") == std::string::npos);
        CHECK(echo.body.find("[redacted]") != std::string::npos);
        // The upstream did receive a key, and the test upstream did echo it.
        CHECK(lastKeys(s, 1)[0].find("sk-upstream-secret") != std::string::npos);

        auto both = call(
            s, path(anthropic), body(anthropic), key,
            {{"x-fake-error-json",
              "400:{\"error\":{\"message\":\"keys " + k1 + " and " + k2 +
                  " are not allowed to use this model\",\"type\":\"invalid_request_error\"}}"}});
        CHECK(both.status == 400);
        CHECK(both.body.find("sk-upstream-secret") == std::string::npos);
        CHECK(errorMessage(both.body) ==
              "keys [redacted] and [redacted] are not allowed to use this model");
    }
    CHECK(books.spent().nanos == 0);
    books.check();
}

TEST_CASE("only allow-listed client headers reach the upstream") {
    Stack s;
    std::string key = s.user("u", "10");
    Books books(s, "u");
    for (bool anthropic : {false, true}) {
        CAPTURE(anthropic);
        auto r = call(s, path(anthropic), body(anthropic), key,
                      {{"x-litellm-tags", "free"},
                       {"X-LiteLLM-Api-Key", "sk-litellm-master"},
                       {"x-litellm-end-user-id", "someone-else"},
                       {"x-evil", "1"},
                       {"Cookie", "session=abc"},
                       {"X-Forwarded-For", "10.0.0.1"},
                       {"Forwarded", "for=10.0.0.1"},
                       {"X-Real-IP", "10.0.0.1"},
                       {"Proxy-Authorization", "Basic eDp5"},
                       {"api-key", key},
                       {"x-api-key", key},
                       {"User-Agent", "evil-agent/6.6"},
                       {"Accept-Encoding", "gzip, br"},
                       {"anthropic-beta", "prompt-caching-2024-07-31"},
                       {"OpenAI-Beta", "assistants=v2"},
                       {"Accept", "application/json"},
                       {"x-fake-chunks", "3"}});
        CHECK(r.status == 200);
        auto seen = s.upstreamRequests();
        REQUIRE(!seen.empty());
        const Seen& up = seen.back();
        // What the proxy's own HTTP client adds, and the allow-list.
        static const std::set<std::string> kMay{
            "host",       "content-length",    "accept-encoding", "expect",
            "connection", "transfer-encoding", "authorization",   "content-type",
            "accept",     "anthropic-version", "anthropic-beta",  "openai-beta",
            "user-agent", "x-fake-chunks"};
        for (const auto& [name, value] : up.headers) {
            CAPTURE(name);
            CAPTURE(value);
            CHECK(kMay.count(name) == 1);
            CHECK(value.find(key) == std::string::npos);
        }
        CHECK(up.header("authorization") == "Bearer upstream-key-1");
        CHECK(up.header("user-agent") == "trollproxy-hostile-test/1.0");
        CHECK(up.header("anthropic-beta") == "prompt-caching-2024-07-31");
        CHECK(up.header("openai-beta") == "assistants=v2");
        CHECK(up.header("accept") == "application/json");
        CHECK(up.header("x-fake-chunks") == "3");
        CHECK(up.header("accept-encoding") == "identity");
        CHECK(up.body.find(key) == std::string::npos);
    }
    books.check();
}

TEST_CASE("x-litellm-tags: free is not forwarded") {
    Stack s;
    std::string key = s.user("u", "10");
    Books books(s, "u");
    auto r = call(s, path(false), body(false), key, {{"x-litellm-tags", "free"}});
    CHECK(r.status == 200);
    REQUIRE(s.upstreamCount() == 1);
    CHECK(!s.upstreamRequests()[0].has("x-litellm-tags"));
    books.check();
}

TEST_CASE("thousands of junk client headers: refused with 431, or dropped") {
    Stack s;
    std::string key = s.user("u", "10");
    Books books(s, "u");
    for (int n : {50, 5000}) {
        CAPTURE(n);
        std::map<std::string, std::string> junk;
        for (int i = 0; i < n; ++i)
            junk["x-junk-" + std::to_string(i)] = "v";
        std::int64_t before = s.upstreamCount();
        auto r = call(s, path(false), body(false), key, junk);
        MESSAGE(n << " junk headers: status " << r.status);
        if (n <= 50)
            CHECK(r.status == 200);
        else
            CHECK((r.status == 431 || r.status == 200));
        if (r.status == 200) {
            auto seen = s.upstreamRequests();
            REQUIRE(static_cast<std::int64_t>(seen.size()) == before + 1);
            for (const auto& [name, value] : seen.back().headers)
                CHECK(name.rfind("x-junk-", 0) != 0);
        } else {
            CHECK(s.upstreamCount() == before);
        }
    }
    CHECK(call(s, path(false), body(false), key).status == 200);
    books.check();
}
