// Holds of running streams: a stream that outlives hold_ttl_seconds keeps its hold.
#include <thread>

#include <doctest/doctest.h>

#include "harness.hpp"

using namespace harness;
using trollproxy::Money;

namespace {

// hold_ttl_seconds 2: the sweep (every 10 s) would release the hold of any
// request older than 2 s unless the stream renews it.
const char* kConfig = R"({
  "port": 8000,
  "endpoints": [{"name": "ant", "base_url": "UPSTREAM/v1/messages"}],
  "models": [{"id": "m", "billing_upstream": "openhands", "output_price_per_mtok": 1000}],
  "trollproxy": {"forward_headers": ["x-fake-*"], "hold_ttl_seconds": 2, "idle_timeout_ms": 5000}
})";

// max_tokens 1000 at $1000/Mtok: a hold of 1 USD (input is free).
const std::string kBody =
    R"({"model":"m","max_tokens":1000,"messages":[{"role":"user","content":"x"}]})";

} // namespace

TEST_CASE("a stream longer than hold_ttl_seconds keeps its hold: its money cannot pay for a second "
          "request") {
    Stack s(kConfig);
    // 1.5 USD: one hold of 1 USD fits, two do not.
    std::string key = s.userWithKey("u", "0", "0", "1.5");
    RawResponse streamed;
    std::thread client([&] {
        streamed = post(s.proxy->port(), "/v1/messages", R"({"stream":true,)" + kBody.substr(1),
                        {{"x-api-key", key},
                         {"x-fake-chunks", "14"},
                         {"x-fake-chunk-delay-ms", "1000"},
                         {"x-fake-usage", "0,500,0,0"}},
                        60);
    });
    // Past the hold's first expiry and past the sweep's first run (10 s after start).
    std::this_thread::sleep_for(std::chrono::seconds(12));
    auto second = post(s.proxy->port(), "/v1/messages", kBody,
                       {{"x-api-key", key}, {"x-fake-usage", "0,500,0,0"}});
    CHECK(second.status == 402);
    client.join();
    CHECK(streamed.status == 200);
    CHECK(streamed.body.find("message_stop") != std::string::npos);
    // The stream pays for its 500 output tokens and nothing fell short.
    CHECK(s.balance("u").creditsNew == *Money::parse("1.0"));
    CHECK(*s.ledger->totalShortfall() == Money{});
    auto logs = s.ledger->usage("u", 10);
    REQUIRE(logs);
    REQUIRE(logs->size() == 2); // newest first: the stream's charge, then the refusal
    CHECK((*logs)[0].cost == *Money::parse("0.5"));
    CHECK((*logs)[0].statusCode == 200);
    CHECK((*logs)[1].statusCode == 402); // refusals are in the request log, uncharged
    CHECK((*logs)[1].cost == Money{});
    CHECK(!(*logs)[1].success);
}
