// End-to-end tests of the proxy path: real proxy and test upstream processes, a real ledger.
#include <csignal>
#include <thread>

#include <doctest/doctest.h>
#include <simdjson.h>

#include "harness.hpp"

using namespace harness;
using trollproxy::Money;

namespace {

const char* kConfig = R"({
  "_comment": "integration test config",
  "port": 8000,
  "endpoints": [
    {"name": "oai", "base_url": "UPSTREAM/v1/chat/completions"},
    {"name": "ant", "base_url": "UPSTREAM/v1/messages"}
  ],
  "models": [
    {"name": "Sonnet new", "id": "sonnet-new", "id_aliases": ["sn"], "type": "openhands",
     "upstream": "openhands", "upstream_model_id": "claude-sonnet-4-5-20250929",
     "billing_upstream": "openhands", "billing_multiplier": 1.1,
     "input_price_per_mtok": 3.0, "output_price_per_mtok": 15.0,
     "cache_write_price_per_mtok": 3.75, "cache_hit_price_per_mtok": 0.3},
    {"name": "Sonnet legacy", "id": "sonnet-legacy", "type": "ohmygpt",
     "upstream": "openhands", "upstream_model_id": "claude-sonnet-4-5-20250929",
     "billing_upstream": "ohmygpt", "billing_multiplier": 1.1,
     "input_price_per_mtok": 3.0, "output_price_per_mtok": 15.0,
     "cache_write_price_per_mtok": 3.75, "cache_hit_price_per_mtok": 0.3}
  ],
  "system_prompt": "",
  "user_agent": "openhands-cli/1.0.0",
  "trollproxy": {"forward_headers": ["x-fake-*"], "first_byte_timeout_ms": 3000, "idle_timeout_ms": 3000, "rate_limit_per_minute": 100000}
})";

// Sonnet prices x 1.1, computed independently of the library: at $3/Mtok one
// token costs 3000 nano-USD; x 1.1 is x 11 / 10, rounded half up.
std::string expectedCost(long long in, long long out, long long cw, long long cr) {
    long long nanos = in * 3000 + out * 15000 + cw * 3750 + cr * 300;
    return Money{(nanos * 11 + 5) / 10}.toString();
}

std::string chatBody(const std::string& model, bool stream, const std::string& extra = "") {
    return R"({"model":")" + model + R"(","messages":[{"role":"user","content":"Hello"}])" +
           (stream ? R"(,"stream":true)" : "") + extra + "}";
}

std::string messagesBody(const std::string& model, bool stream, const std::string& extra = "") {
    return R"({"model":")" + model +
           R"(","max_tokens":4096,"messages":[{"role":"user","content":"Hello"}])" +
           (stream ? R"(,"stream":true)" : "") + extra + "}";
}

std::map<std::string, std::string> auth(const std::string& key,
                                        std::map<std::string, std::string> more = {}) {
    more["Authorization"] = "Bearer " + key;
    return more;
}

// The requests the test upstream saw, as parsed JSON.
struct Seen {
    std::string path, body, authorization, anthropicVersion, userAgent, anthropicBeta;
};

std::vector<Seen> upstreamRequests(int port) {
    RawResponse r = get(port, "/_requests");
    std::vector<Seen> out;
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (parser.parse(r.body).get(doc))
        return out;
    for (simdjson::dom::element e : doc.get_array()) {
        Seen s;
        std::string_view v;
        if (!e["path"].get_string().get(v))
            s.path = v;
        if (!e["body"].get_string().get(v))
            s.body = v;
        simdjson::dom::object headers;
        if (!e["headers"].get_object().get(headers)) {
            for (auto [k, val] : headers) {
                std::string name(k);
                for (auto& c : name)
                    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
                std::string_view sv;
                if (val.get_string().get(sv))
                    continue;
                if (name == "authorization")
                    s.authorization = sv;
                else if (name == "anthropic-version")
                    s.anthropicVersion = sv;
                else if (name == "user-agent")
                    s.userAgent = sv;
                else if (name == "anthropic-beta")
                    s.anthropicBeta = sv;
            }
        }
        out.push_back(s);
    }
    return out;
}

std::string usageHeader(long long in, long long out, long long cw, long long cr) {
    return std::to_string(in) + "," + std::to_string(out) + "," + std::to_string(cw) + "," +
           std::to_string(cr);
}

} // namespace

TEST_CASE("both formats, streaming and not, bill the model's pool exactly") {
    Stack s(kConfig);
    std::string keyNew = s.userWithKey("alice", "0", "0", "10");
    std::string keyOld = s.userWithKey("bob", "1", "10", "0");

    Money spentNew{0}, spentOld{0};
    for (bool stream : {false, true}) {
        for (bool anthropic : {false, true}) {
            for (bool legacy : {false, true}) {
                CAPTURE(stream);
                CAPTURE(anthropic);
                CAPTURE(legacy);
                std::string model = legacy ? "sonnet-legacy" : "sonnet-new";
                long long in = 1000, out = 500, cw = anthropic ? 2000 : 0, cr = 10000;
                std::string body =
                    anthropic ? messagesBody(model, stream) : chatBody(model, stream);
                auto r =
                    post(s.proxy->port(), anthropic ? "/v1/messages" : "/v1/chat/completions", body,
                         auth(legacy ? keyOld : keyNew,
                              {{"x-fake-usage", usageHeader(in, out, cw, cr)}}));
                REQUIRE(r.status == 200);
                std::string cost = expectedCost(in, out, cw, cr);
                if (!stream)
                    CHECK(r.headers["x-trollproxy-cost"] == cost);
                else
                    CHECK(r.headers["content-type"].find("text/event-stream") == 0);
                (legacy ? spentOld : spentNew) += *Money::parse(cost);
            }
        }
    }
    auto a = s.balance("alice");
    CHECK(a.creditsNew == *Money::parse("10") - spentNew);
    CHECK(a.creditsNewUsed == spentNew);
    CHECK(a.credits.nanos == 0);
    CHECK(a.refCredits.nanos == 0);
    auto b = s.balance("bob");
    // credits (1 USD) is used first, the rest comes from refCredits.
    CHECK(b.credits + b.refCredits == *Money::parse("11") - spentOld);
    CHECK(b.creditsUsed == spentOld);
    CHECK(b.creditsNew.nanos == 0);
    CHECK(b.creditsNewUsed.nanos == 0);
    auto logs = s.ledger->usage("bob", 100);
    REQUIRE(logs);
    CHECK(logs->size() == 4);
    for (const auto& e : *logs)
        CHECK(e.creditType == "ohmygpt");
}

TEST_CASE("upstream connections are kept and reused, streamed answers and whole ones alike") {
    Stack s(kConfig);
    std::string key = s.userWithKey("alice", "0", "0", "10");
    REQUIRE(post(s.upstream->port(), "/_reset", "{}", {}).status == 200);
    for (int i = 0; i < 20; ++i) {
        const bool stream = i % 2 == 1;
        auto r = post(s.proxy->port(), "/v1/chat/completions", chatBody("sonnet-new", stream),
                      auth(key));
        REQUIRE(r.status == 200);
        if (stream)
            CHECK(r.body.find("[DONE]") != std::string::npos);
    }
    RawResponse st = get(s.upstream->port(), "/_stats");
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    REQUIRE_FALSE(parser.parse(st.body).get(doc));
    CHECK(int64_t(doc["requests"]) == 20);
    // One after the other, the requests run on the worker that went idle last
    // (or, while it finishes, another one), whose connection to the upstream
    // stays open. Without reuse: 20.
    CHECK(int64_t(doc["connections"]) <= 6);
}

TEST_CASE("a whole answer larger than the socket's buffers arrives byte for byte") {
    // The head is held and sent with the body in one sendmsg; a body of
    // megabytes fills the socket, so the rest goes out in parts as the client reads.
    Stack s(kConfig);
    std::string key = s.userWithKey("erin", "0", "0", "100");
    std::map<std::string, std::string> big{{"x-fake-chunks", "1000000"},
                                           {"x-fake-tool-call", "0"},
                                           {"Authorization", "Bearer upstream-key-1"}};
    auto direct = post(s.upstream->port(), "/v1/chat/completions",
                       chatBody("claude-sonnet-4-5-20250929", false), big);
    REQUIRE(direct.status == 200);
    REQUIRE(direct.body.size() > 8'000'000); // more than a socket buffer holds (tcp_wmem 4 MiB)
    big["Authorization"] = "Bearer " + key;
    auto r = post(s.proxy->port(), "/v1/chat/completions", chatBody("sonnet-new", false), big);
    REQUIRE(r.status == 200);
    CHECK(r.headers["content-length"] == std::to_string(r.body.size()));
    // The same answer but for its "created" second: the same text, whole.
    auto content = [](const std::string& body) {
        simdjson::dom::parser parser;
        std::string_view text;
        if (parser.parse(body)["choices"].at(0)["message"]["content"].get_string().get(text))
            return std::string();
        return std::string(text);
    };
    const std::string sent = content(direct.body);
    REQUIRE(sent.size() > 2'000'000);
    CHECK(r.body.size() == direct.body.size());
    CHECK((content(r.body) == sent)); // (not the megabytes in a failure message)
    // And the proxy goes on serving.
    auto next =
        post(s.proxy->port(), "/v1/chat/completions", chatBody("sonnet-new", false), auth(key));
    CHECK(next.status == 200);
}

TEST_CASE("the reference example: cache tokens priced exactly") {
    Stack s(kConfig);
    std::string key = s.userWithKey("carol", "0", "0", "5");
    auto r = post(s.proxy->port(), "/v1/messages", messagesBody("sn", false),
                  auth(key, {{"x-fake-usage", usageHeader(1000, 500, 2000, 10000)}}));
    REQUIRE(r.status == 200);
    CHECK(r.headers["x-trollproxy-cost"] == "0.023100000");
    CHECK(s.balance("carol").creditsNew == *Money::parse("4.976900000"));
}

TEST_CASE("the request reaches the upstream untouched except model, key and stream usage") {
    Stack s(kConfig);
    std::string key = s.userWithKey("dave", "0", "0", "5");
    std::string body =
        R"({"model":"sonnet-new","messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}}]}],)"
        R"("tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"future_field":{"a":[1,2.50,"x\u00e9"]},  "temperature":0.7})";
    auto r =
        post(s.proxy->port(), "/v1/chat/completions", body, auth(key, {{"anthropic-beta", "b1"}}));
    REQUIRE(r.status == 200);
    auto seen = upstreamRequests(s.upstream->port());
    REQUIRE(seen.size() == 1);
    std::string expected = body;
    expected.replace(expected.find("sonnet-new"), 10, "claude-sonnet-4-5-20250929");
    CHECK(seen[0].body == expected);
    CHECK(seen[0].authorization == "Bearer upstream-key-1");
    CHECK(seen[0].userAgent == "openhands-cli/1.0.0");
    CHECK(seen[0].anthropicBeta == "b1");
    CHECK(seen[0].body.find(key) == std::string::npos);

    // Anthropic: x-api-key is the client's key and must not travel; a version is added.
    auto m = post(s.proxy->port(), "/v1/messages", messagesBody("sonnet-new", false),
                  {{"x-api-key", key}});
    REQUIRE(m.status == 200);
    seen = upstreamRequests(s.upstream->port());
    REQUIRE(seen.size() == 2);
    CHECK(seen[1].anthropicVersion == "2023-06-01");
    CHECK(seen[1].authorization == "Bearer upstream-key-1");
}

TEST_CASE("an OpenAI stream gets include_usage; the extra usage chunk is hidden unless asked for") {
    Stack s(kConfig);
    std::string key = s.userWithKey("erin", "0", "0", "5");
    auto r = post(s.proxy->port(), "/v1/chat/completions", chatBody("sonnet-new", true),
                  auth(key, {{"x-fake-usage", usageHeader(100, 10, 0, 0)}}));
    REQUIRE(r.status == 200);
    auto seen = upstreamRequests(s.upstream->port());
    REQUIRE(seen.size() == 1);
    CHECK(seen[0].body.find(R"("stream_options":{"include_usage":true})") != std::string::npos);
    CHECK(r.body.find("\"usage\":{") == std::string::npos);
    CHECK(r.body.find("data: [DONE]") != std::string::npos);
    CHECK(s.balance("erin").creditsNewUsed.toString() == expectedCost(100, 10, 0, 0));

    auto asked = post(s.proxy->port(), "/v1/chat/completions",
                      chatBody("sonnet-new", true, R"(,"stream_options":{"include_usage":true})"),
                      auth(key, {{"x-fake-usage", usageHeader(100, 10, 0, 0)}}));
    REQUIRE(asked.status == 200);
    CHECK(asked.body.find("\"usage\":{") != std::string::npos);
}

TEST_CASE("streams arrive event by event, not at the end") {
    Stack s(kConfig);
    std::string key = s.userWithKey("fay", "0", "0", "5");
    auto r = post(s.proxy->port(), "/v1/messages", messagesBody("sonnet-new", true),
                  auth(key, {{"x-fake-chunks", "5"}, {"x-fake-chunk-delay-ms", "300"}}));
    REQUIRE(r.status == 200);
    REQUIRE(r.chunks.size() >= 3);
    double firstContent = -1;
    for (const auto& [t, bytes] : r.chunks) {
        if (bytes.find("content_block_delta") != std::string::npos) {
            firstContent = t;
            break;
        }
    }
    double last = r.chunks.back().first;
    CHECK(firstContent >= 0);
    CHECK(last - firstContent >= 0.9); // later events came later
    CHECK(r.body.find("message_stop") != std::string::npos);
}

TEST_CASE("insufficient credits: 402 before anything reaches the upstream") {
    Stack s(kConfig);
    std::string key = s.userWithKey("gus", "0", "0", "0.000001");
    for (auto [path, body] : {std::pair{"/v1/chat/completions", chatBody("sonnet-new", false)},
                              {"/v1/messages", messagesBody("sonnet-new", false)}}) {
        auto r = post(s.proxy->port(), path, body, auth(key));
        CHECK(r.status == 402);
        if (std::string(path) == "/v1/messages")
            CHECK(r.body.find(R"("type":"error")") != std::string::npos);
        else
            CHECK(r.body.find(R"("code":"insufficient_credits")") != std::string::npos);
    }
    CHECK(upstreamRequests(s.upstream->port()).empty());
    CHECK(s.balance("gus").creditsNew == *Money::parse("0.000001"));
    // A legacy-pool user with only creditsNew cannot use the credits pool.
    std::string k2 = s.userWithKey("hal", "0", "0", "100");
    CHECK(post(s.proxy->port(), "/v1/messages", messagesBody("sonnet-legacy", false), auth(k2))
              .status == 402);
    CHECK(
        post(s.proxy->port(), "/v1/messages", messagesBody("sonnet-new", false), auth(k2)).status ==
        200);
}

TEST_CASE("keys, models and routes are checked, in the caller's format") {
    Stack s(kConfig);
    std::string key = s.userWithKey("ivy", "0", "0", "5");
    auto r =
        post(s.proxy->port(), "/v1/chat/completions", chatBody("no-such-model", false), auth(key));
    CHECK(r.status == 404);
    CHECK(r.body.find(R"({"error":{)") == 0);
    r = post(s.proxy->port(), "/v1/messages", messagesBody("no-such-model", false), auth(key));
    CHECK(r.status == 404);
    CHECK(r.body.find(R"({"type":"error","error":{"type":"not_found_error")") == 0);
    CHECK(post(s.proxy->port(), "/v1/messages", messagesBody("sonnet-new", false),
               auth("sk-trollllm-nope"))
              .status == 401);
    CHECK(post(s.proxy->port(), "/v1/messages", messagesBody("sonnet-new", false), {}).status ==
          401);
    REQUIRE(s.ledger->revokeKey(key));
    // A key the proxy accepted is trusted for auth_cache_ms (1 s by default): past it, refused.
    std::this_thread::sleep_for(std::chrono::milliseconds(1100));
    r = post(s.proxy->port(), "/v1/chat/completions", chatBody("sonnet-new", false), auth(key));
    CHECK(r.status == 401);
    CHECK(upstreamRequests(s.upstream->port()).empty());

    auto models = get(s.proxy->port(), "/v1/models");
    CHECK(models.status == 200);
    CHECK(models.body.find(R"({"object":"list","data":[{"id":"sonnet-new","object":"model")") == 0);
    CHECK(get(s.proxy->port(), "/health").status == 200);
    CHECK(get(s.proxy->port(), "/ready").status == 200);
    CHECK(get(s.proxy->port(), "/metrics").status == 404); // only on the metrics listener
    auto metrics = get(s.metricsPort, "/metrics");
    CHECK(metrics.body.find("trollproxy_requests_total{route=\"/v1/messages\",status=\"401\"}") !=
          std::string::npos);
}
