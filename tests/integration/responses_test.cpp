// The Responses API and the free routes: bad input, ownership of response ids, exact charges.
#include <doctest/doctest.h>
#include <simdjson.h>

#include "harness.hpp"

using namespace harness;
using trollproxy::Money;

namespace {

const char* kConfig = R"({
  "port": 8000,
  "endpoints": [
    {"name": "oai", "base_url": "UPSTREAM/v1/chat/completions"},
    {"name": "ant", "base_url": "UPSTREAM/v1/messages"},
    {"name": "resp", "base_url": "UPSTREAM/v1/responses"}
  ],
  "models": [{"id": "gpt", "billing_upstream": "openhands", "input_price_per_mtok": 1,
              "output_price_per_mtok": 10, "cache_hit_price_per_mtok": 0.1}],
  "trollproxy": {"forward_headers": ["x-fake-*"], "idle_timeout_ms": 3000}
})";

// The same without a responses endpoint.
const char* kNoResponses = R"({
  "port": 8000,
  "endpoints": [{"name": "oai", "base_url": "UPSTREAM/v1/chat/completions"}],
  "models": [{"id": "gpt", "billing_upstream": "openhands", "input_price_per_mtok": 1}],
  "trollproxy": {"forward_headers": ["x-fake-*"]}
})";

std::map<std::string, std::string> auth(const std::string& key,
                                        std::map<std::string, std::string> more = {}) {
    more["Authorization"] = "Bearer " + key;
    return more;
}

std::string field(const std::string& json, const char* key) {
    simdjson::dom::parser p;
    simdjson::dom::element doc;
    std::string_view v;
    if (p.parse(json).get(doc) || doc[key].get_string().get(v))
        return {};
    return std::string(v);
}

void expectOpenAIError(const RawResponse& r, int status) {
    CHECK(r.status == status);
    CHECK(r.body.find(R"({"error":{"message":)") == 0);
}

} // namespace

TEST_CASE(
    "a response is charged exactly: cached input at the cache price, reasoning not added twice") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    // input 200 uncached + 1000 cached, output 300 (of which 120 reasoning).
    auto r =
        post(s.proxy->port(), "/v1/responses", R"({"model":"gpt","input":"hi"})",
             auth(key, {{"x-fake-usage", "200,300,0,1000"}, {"x-fake-reasoning-tokens", "120"}}));
    REQUIRE(r.status == 200);
    // 200 x 1 + 1000 x 0.1 + 300 x 10 = 3300 micro-USD.
    CHECK(r.headers["x-trollproxy-cost"] == "0.003300000");
    CHECK(s.balance("u").creditsNew == *Money::parse("9.9967"));

    auto streamed =
        post(s.proxy->port(), "/v1/responses", R"({"model":"gpt","input":"hi","stream":true})",
             auth(key, {{"x-fake-usage", "200,300,0,1000"}}));
    REQUIRE(streamed.status == 200);
    CHECK(streamed.body.find("event: response.completed") != std::string::npos);
    CHECK(s.balance("u").creditsNew == *Money::parse("9.9934"));
    auto logs = s.ledger->usage("u", 10);
    REQUIRE(logs);
    CHECK(logs->size() == 2);
}

TEST_CASE("bad input on the Responses routes gets OpenAI-shaped errors and costs nothing") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    expectOpenAIError(post(s.proxy->port(), "/v1/responses", R"({"model":"gpt",)", auth(key)), 400);
    expectOpenAIError(
        post(s.proxy->port(), "/v1/responses", R"({"model":"nope","input":"x"})", auth(key)), 404);
    expectOpenAIError(
        post(s.proxy->port(), "/v1/responses", R"({"model":"gpt","model":"gpt"})", auth(key)), 400);
    expectOpenAIError(post(s.proxy->port(), "/v1/responses",
                           R"({"model":"gpt","previous_response_id":7})", auth(key)),
                      400);
    expectOpenAIError(post(s.proxy->port(), "/v1/responses", R"({"model":"gpt","input":"x"})", {}),
                      401);
    expectOpenAIError(get(s.proxy->port(), "/v1/responses/resp_unknown"), 401);
    CHECK(s.balance("u").creditsNew == *Money::parse("10"));
    CHECK(get(s.proxy->port(), "/health").status == 200);

    Stack bare(kNoResponses);
    std::string k2 = bare.userWithKey("v", "0", "0", "10");
    auto r = post(bare.proxy->port(), "/v1/responses", R"({"model":"gpt","input":"x"})", auth(k2));
    expectOpenAIError(r, 404);
    CHECK(r.body.find("/responses") != std::string::npos);
    CHECK(bare.balance("v").creditsNew == *Money::parse("10"));
}

TEST_CASE("a response id is reachable only by the user who created it; retrieval is free") {
    Stack s(kConfig);
    std::string alice = s.userWithKey("alice", "0", "0", "10");
    std::string bob = s.userWithKey("bob", "0", "0", "10");
    auto created = post(s.proxy->port(), "/v1/responses", R"({"model":"gpt","input":"hi"})",
                        auth(alice, {{"x-fake-usage", "10,10,0,0"}}));
    REQUIRE(created.status == 200);
    std::string id = field(created.body, "id");
    REQUIRE(!id.empty());
    Money afterCreate = s.balance("alice").creditsNew;

    auto raw = [&](const std::string& method, const std::string& k) {
        return rawExchange(s.proxy->port(), method + " /v1/responses/" + id +
                                                " HTTP/1.1\r\nHost: x\r\n"
                                                "Authorization: Bearer " +
                                                k + "\r\nConnection: close\r\n\r\n");
    };
    auto mine = raw("GET", alice);
    CHECK(mine.status == 200);
    CHECK(field(mine.body, "id") == id);
    expectOpenAIError(raw("GET", bob), 404);
    expectOpenAIError(raw("DELETE", bob), 404);
    // Continuing someone else's response is refused before anything is held or sent.
    auto cont =
        post(s.proxy->port(), "/v1/responses",
             R"({"model":"gpt","input":"more","previous_response_id":")" + id + "\"}", auth(bob));
    expectOpenAIError(cont, 404);
    auto own = post(s.proxy->port(), "/v1/responses",
                    R"({"model":"gpt","input":"more","previous_response_id":")" + id + "\"}",
                    auth(alice, {{"x-fake-usage", "10,10,0,0"}}));
    CHECK(own.status == 200);
    CHECK(raw("DELETE", alice).status == 200);
    CHECK(s.balance("bob").creditsNew == *Money::parse("10"));
    // Alice paid for her two responses, not for the retrieval or the deletion.
    CHECK(s.balance("alice").creditsNew == afterCreate - (*Money::parse("10") - afterCreate));
    CHECK(s.ledger->usage("alice", 10)->size() == 2);
}

TEST_CASE("a Responses stream that ends without usage is charged once, from what was sent") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    auto r = post(s.proxy->port(), "/v1/responses", R"({"model":"gpt","input":"hi","stream":true})",
                  auth(key, {{"x-fake-no-usage", "1"}}));
    CHECK(r.status == 200);
    auto logs = s.ledger->usage("u", 10);
    REQUIRE(logs);
    REQUIRE(logs->size() == 1);
    CHECK((*logs)[0].usage.estimated);
    CHECK((*logs)[0].usage.output > 0);
    CHECK((*logs)[0].cost.nanos > 0);
    CHECK(s.balance("u").creditsNew == *Money::parse("10") - (*logs)[0].cost);

    // Cut mid-stream by the upstream after some text: estimated, charged once.
    auto cut =
        post(s.proxy->port(), "/v1/responses", R"({"model":"gpt","input":"hi","stream":true})",
             auth(key, {{"x-fake-cut-after", "3"}}));
    CHECK(cut.status == 200);
    logs = s.ledger->usage("u", 10);
    REQUIRE(logs->size() == 2);
    Money total;
    for (const auto& e : *logs)
        total += e.cost;
    CHECK(s.balance("u").creditsNew == *Money::parse("10") - total);
}

TEST_CASE("count_tokens: authenticated, forwarded with the upstream model, never charged") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    std::string body = R"({"model":"gpt","messages":[{"role":"user","content":"Hello there"}]})";
    auto r =
        post(s.proxy->port(), "/v1/messages/count_tokens?beta=true", body, {{"x-api-key", key}});
    CHECK(r.status == 200);
    CHECK(r.body.find("\"input_tokens\"") != std::string::npos);
    auto anon = post(s.proxy->port(), "/v1/messages/count_tokens", body, {});
    CHECK(anon.status == 401);
    CHECK(anon.body.find(R"({"type":"error")") == 0);
    auto unknown = post(s.proxy->port(), "/v1/messages/count_tokens",
                        R"({"model":"nope","messages":[]})", {{"x-api-key", key}});
    CHECK(unknown.status == 404);
    CHECK(s.balance("u").creditsNew == *Money::parse("10"));
    CHECK(s.ledger->usage("u", 10)->empty());
}
