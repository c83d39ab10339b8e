// The proxy under upstream failures: retries, key rotation, timeouts, cuts and disconnects.
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sqlite3.h>

#include <doctest/doctest.h>

#include "harness.hpp"

using namespace harness;
using trollproxy::Money;

namespace {

const char* kConfig = R"({
  "port": 8000,
  "endpoints": [
    {"name": "oai", "base_url": "UPSTREAM/v1/chat/completions"},
    {"name": "ant", "base_url": "UPSTREAM/v1/messages"}
  ],
  "models": [
    {"id": "m", "type": "openhands", "upstream": "openhands", "billing_upstream": "openhands",
     "billing_multiplier": 1, "input_price_per_mtok": 1, "output_price_per_mtok": 2}
  ],
  "trollproxy": {"forward_headers": ["x-fake-*"], "first_byte_timeout_ms": 1500, "idle_timeout_ms": 1500}
})";

std::string chat(bool stream) {
    return std::string(R"({"model":"m","messages":[{"role":"user","content":"x"}])") +
           (stream ? R"(,"stream":true})" : "}");
}
std::string msgs(bool stream) {
    return std::string(
               R"({"model":"m","max_tokens":2000,"messages":[{"role":"user","content":"x"}])") +
           (stream ? R"(,"stream":true})" : "}");
}

std::map<std::string, std::string> h(const std::string& key,
                                     std::map<std::string, std::string> more = {}) {
    more["Authorization"] = "Bearer " + key;
    more["x-fake-usage"] = "1000,1000,0,0"; // costs 0.003 USD
    return more;
}

const Money kStart = *Money::parse("10");

} // namespace

TEST_CASE("a 429 or a spent key moves on to the next key; the request is billed once") {
    for (const char* failure : {"429", "401", "402", "403", "400budget"}) {
        CAPTURE(failure);
        Stack s(kConfig, {{"TROLLPROXY_UPSTREAM_KEYS", "k1,k2"}},
                {"--fail-key", std::string("k1=") + failure});
        std::string key = s.userWithKey("u", "0", "0", "10");
        for (int i = 0; i < 3; ++i) {
            auto r = post(s.proxy->port(), "/v1/messages", msgs(false), h(key));
            CHECK(r.status == 200);
            CHECK(r.headers["x-trollproxy-cost"] == "0.003000000");
        }
        CHECK(s.balance("u").creditsNew == kStart - *Money::parse("0.009"));
        CHECK(s.ledger->usage("u", 10)->size() == 3);
    }
}

TEST_CASE("when every key is rate limited the client gets 429 with Retry-After and pays nothing") {
    Stack s(kConfig, {{"TROLLPROXY_UPSTREAM_KEYS", "k1,k2"}},
            {"--fail-key", "k1=429", "--fail-key", "k2=429"});
    std::string key = s.userWithKey("u", "0", "0", "10");
    auto r = post(s.proxy->port(), "/v1/chat/completions", chat(false), h(key));
    CHECK(r.status == 429);
    CHECK(!r.headers["retry-after"].empty());
    CHECK(r.body.find(R"({"error":{)") == 0);
    CHECK(s.balance("u").creditsNew == kStart);
}

TEST_CASE("5xx is retried on the next key before anything was sent; with no key left it is a 502") {
    {
        Stack s(kConfig, {{"TROLLPROXY_UPSTREAM_KEYS", "k1,k2"}});
        std::string key = s.userWithKey("u", "0", "0", "10");
        auto r = post(
            s.proxy->port(), "/v1/messages", msgs(true),
            h(key, {{"x-fake-status", "500"}, {"x-fake-fail-times", "1"}, {"x-fake-id", "a1"}}));
        CHECK(r.status == 200);
        CHECK(r.body.find("message_stop") != std::string::npos);
        CHECK(s.balance("u").creditsNew == kStart - *Money::parse("0.003"));
    }
    {
        Stack s(kConfig);
        std::string key = s.userWithKey("u", "0", "0", "10");
        auto r =
            post(s.proxy->port(), "/v1/messages", msgs(false), h(key, {{"x-fake-status", "500"}}));
        CHECK(r.status == 502);
        CHECK(r.body.find(R"("type":"error")") != std::string::npos);
        CHECK(s.balance("u").creditsNew == kStart);
    }
}

TEST_CASE("the upstream's refusal of a bad request reaches the client as is, unbilled") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    auto r = post(s.proxy->port(), "/v1/chat/completions", chat(false),
                  h(key, {{"x-fake-status", "400"}}));
    CHECK(r.status == 400);
    CHECK(r.body.find(R"({"error":)") == 0);
    CHECK(s.balance("u").creditsNew == kStart);
}

TEST_CASE("a slow first byte times out as 504 and costs nothing") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    auto r = post(s.proxy->port(), "/v1/chat/completions", chat(false),
                  h(key, {{"x-fake-latency-ms", "4000"}}));
    CHECK(r.status == 504);
    CHECK(s.balance("u").creditsNew == kStart);
}

// A listener whose accept queue is full: the kernel drops further SYNs, so a
// connection to it never completes (until the client gives up).
struct Blackhole {
    int listener = -1;
    std::vector<int> queued;
    int port = 0;
    Blackhole() {
        listener = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&a), len) == 0);
        REQUIRE(::listen(listener, 0) == 0);
        REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len) == 0);
        port = ntohs(a.sin_port);
        for (int i = 0; i < 3; ++i) { // fills the queue; the rest wait in SYN_SENT
            int c = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            (void)::connect(c, reinterpret_cast<sockaddr*>(&a), len);
            queued.push_back(c);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ~Blackhole() {
        for (int c : queued)
            ::close(c);
        ::close(listener);
    }
};

TEST_CASE(
    "an upstream that never completes the handshake fails after connect_timeout_ms, unbilled") {
    Blackhole hole;
    // The first byte may take 20 s: only libcurl's connect timer ends the attempt early.
    std::string config = R"({"port": 8000,
      "endpoints": [{"name": "oai", "base_url": "http://127.0.0.1:)" +
                         std::to_string(hole.port) + R"(/v1/chat/completions"}],
      "models": [{"id": "m", "type": "openhands", "upstream": "openhands",
                  "billing_upstream": "openhands", "input_price_per_mtok": 1,
                  "output_price_per_mtok": 2}],
      "trollproxy": {"connect_timeout_ms": 300, "first_byte_timeout_ms": 20000,
                     "idle_timeout_ms": 20000}})";
    Stack s(config);
    std::string key = s.userWithKey("u", "0", "0", "10");
    const auto start = std::chrono::steady_clock::now();
    auto r = post(s.proxy->port(), "/v1/chat/completions", chat(false), h(key), 60);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    CHECK((r.status == 502 || r.status == 504));
    CHECK(seconds < 10); // one or more 0.3 s attempts, not the 20 s first-byte wait
    CHECK(s.balance("u").creditsNew == kStart);
}

TEST_CASE("a stream cut by the upstream: nothing served is free, something served is billed as "
          "estimated") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    auto none = post(s.proxy->port(), "/v1/chat/completions", chat(true),
                     h(key, {{"x-fake-cut-after", "0"}}));
    CHECK(none.status == 200);
    CHECK(s.balance("u").creditsNew == kStart);

    auto some =
        post(s.proxy->port(), "/v1/messages", msgs(true), h(key, {{"x-fake-cut-after", "3"}}));
    CHECK(some.status == 200);
    CHECK(some.body.find("message_stop") == std::string::npos);
    auto b = s.balance("u");
    CHECK(b.creditsNew < kStart);
    auto logs = s.ledger->usage("u", 10);
    REQUIRE(logs->size() == 1);
    CHECK((*logs)[0].usage.estimated);
    CHECK(b.creditsNewUsed == (*logs)[0].cost);
}

TEST_CASE("a client that hangs up mid-stream stops the upstream and pays for what was reported") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    std::string got =
        postAndHangUp(s.proxy->port(), "/v1/messages", msgs(true),
                      h(key, {{"x-fake-chunks", "50"}, {"x-fake-chunk-delay-ms", "100"}}), 400);
    CHECK(got.find("200") != std::string::npos);
    // The proxy notices at its next write.
    std::vector<trollproxy::LogEntry> logs;
    for (int i = 0; i < 50 && logs.empty(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        logs = *s.ledger->usage("u", 10);
    }
    REQUIRE(logs.size() == 1);
    CHECK(logs[0].usage.estimated);
    CHECK(logs[0].usage.uncachedInput == 1000); // reported in message_start
    auto b = s.balance("u");
    CHECK(b.creditsNewUsed == logs[0].cost);
    CHECK(b.creditsNew == kStart - logs[0].cost);
}

TEST_CASE("rate limit per key: 429 with Retry-After and X-RateLimit headers") {
    std::string cfg = kConfig;
    cfg.replace(cfg.find("\"first_byte_timeout_ms\""), 0, "\"rate_limit_per_minute\": 2, ");
    Stack s(cfg);
    std::string key = s.userWithKey("u", "0", "0", "10");
    auto r1 = post(s.proxy->port(), "/v1/chat/completions", chat(false), h(key));
    CHECK(r1.status == 200);
    CHECK(r1.headers["x-ratelimit-limit"] == "2");
    CHECK(r1.headers["x-ratelimit-remaining"] == "1");
    CHECK(post(s.proxy->port(), "/v1/chat/completions", chat(false), h(key)).status == 200);
    auto r3 = post(s.proxy->port(), "/v1/chat/completions", chat(false), h(key));
    CHECK(r3.status == 429);
    CHECK(!r3.headers["retry-after"].empty());
    CHECK(r3.headers["x-ratelimit-remaining"] == "0");
    CHECK(!r3.headers["x-ratelimit-reset"].empty());
}

TEST_CASE("ledger_timeout_ms bounds a request's wait on a locked ledger: 503 in the caller's "
          "format, then served") {
    std::string cfg = kConfig;
    cfg.replace(cfg.find("\"first_byte_timeout_ms\""), 0, "\"ledger_timeout_ms\": 300, ");
    Stack s(cfg);
    std::string key = s.userWithKey("u", "0", "0", "10");
    // Another process's write transaction: reads (authentication) go on, writes (the hold) wait.
    sqlite3* other = nullptr;
    REQUIRE(sqlite3_open((s.dir + "/ledger.db").c_str(), &other) == SQLITE_OK);
    REQUIRE(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
    auto start = std::chrono::steady_clock::now();
    RawResponse r = post(s.proxy->port(), "/v1/messages", msgs(false), h(key));
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(other);
    CHECK(r.status == 503);
    CHECK(r.body.find("\"type\":\"error\"") != std::string::npos); // Anthropic's error shape
    CHECK(waited < 2.0); // the default 3 s bound would not fit
    CHECK(s.balance("u").creditsNew == kStart);
    CHECK(post(s.proxy->port(), "/v1/messages", msgs(false), h(key)).status == 200);
}
