// Tests of config loading and validation against the goproxy schema.
#include <cstdlib>
#include <string>

#include <doctest/doctest.h>

#include "trollproxy/config.hpp"

using namespace trollproxy;

namespace {

std::string sourceRoot() {
    const char* r = std::getenv("TROLLPROXY_SOURCE_ROOT");
    return r ? r : ".";
}

// A minimal valid config with one model whose fields can be overridden.
std::string withModel(const std::string& modelFields, const std::string& top = "\"port\": 8005") {
    return "{" + top +
           ", \"endpoints\": [{\"name\": \"e\", \"base_url\": \"https://x/v1/messages\"}],"
           " \"models\": [{\"id\": \"a\", \"billing_upstream\": \"openhands\"}, {" +
           modelFields + "}]}";
}

std::string errorOf(const std::string& json) {
    auto r = parseConfig(json, "test.json");
    REQUIRE_FALSE(r.ok());
    return r.error().message;
}

} // namespace

TEST_CASE("the goproxy reference configs load unchanged") {
    for (const char* f : {"config-openhands-prod.json", "config-ohmygpt-prod.json"}) {
        CAPTURE(f);
        auto cfg = loadConfigFile(sourceRoot() + "/configs/goproxy/" + f);
        REQUIRE_MESSAGE(cfg.ok(), (cfg.ok() ? "" : cfg.error().message));
        CHECK(cfg->warnings.empty());
        CHECK(cfg->endpoints.size() == 2);
    }
    auto cfg = *loadConfigFile(sourceRoot() + "/configs/goproxy/config-ohmygpt-prod.json");
    CHECK(cfg.port == 8005);
    CHECK(cfg.userAgent == "openhands-cli/1.0.0");
    const ModelConfig* sonnet = cfg.findModel("claude-sonnet-4-5");
    REQUIRE(sonnet);
    CHECK(sonnet->id == "claude-sonnet-4-5-20250929");
    CHECK(sonnet->pool == Pool::Credits);
    CHECK(sonnet->upstream == "openhands");
    CHECK(sonnet->prices.cacheWrite.toString() == "3.750000000");
    CHECK(sonnet->prices.multiplier.toString() == "1.1");
    CHECK(sonnet->thinkingBudget == 12000);
    CHECK(cfg.findModel("claude-sonnet-4-5-20250929") == sonnet);
    CHECK(cfg.findModel("nope") == nullptr);

    auto oh = *loadConfigFile(sourceRoot() + "/configs/goproxy/config-openhands-prod.json");
    const ModelConfig* gpt = oh.findModel("gpt-5.1");
    REQUIRE(gpt);
    CHECK(gpt->pool == Pool::CreditsNew);
    CHECK(gpt->prices.cacheRead.nanos == 130'000'000);
    CHECK(gpt->prices.cacheWrite.nanos == 0);
}

TEST_CASE("malformed JSON is reported with line and column") {
    std::string msg = errorOf("{\n  \"port\": 8005,\n  \"models\": [\n}");
    CHECK(msg.find("test.json: line 4, column 1: malformed JSON") == 0);
    msg = errorOf("{\"port\": 80,}");
    CHECK(msg.find("line 1, column 13") != std::string::npos);
    CHECK(errorOf("").find("line 1, column 1") != std::string::npos);
}

TEST_CASE("each invalid field is rejected with its path") {
    CHECK(errorOf(withModel("\"billing_upstream\": \"ohmypgt\", \"id\": \"b\"")) ==
          "test.json: models[1].billing_upstream: \"ohmypgt\" is not one of openhands, ohmygpt");
    CHECK(errorOf(withModel("\"id\": \"b\"")) ==
          "test.json: models[1].billing_upstream: is missing (one of openhands, ohmygpt)");
    CHECK(errorOf(withModel("\"billing_upstream\": \"ohmygpt\"")) ==
          "test.json: models[1].id: is missing");
    CHECK(errorOf(withModel("\"id\": \"a\", \"billing_upstream\": \"ohmygpt\"")) ==
          "test.json: models[1].id: \"a\" is already used by models[0].id");
    CHECK(errorOf(withModel(
              "\"id\": \"b\", \"id_aliases\": [\"a\"], \"billing_upstream\": \"ohmygpt\"")) ==
          "test.json: models[1].id_aliases[0]: \"a\" is already used by models[0].id");
    CHECK(errorOf(withModel(
              "\"id\": \"b\", \"id_aliases\": [\"\"], \"billing_upstream\": \"ohmygpt\"")) ==
          "test.json: models[1].id_aliases[0]: an alias must not be empty");
    CHECK(errorOf(withModel(
              "\"id\": \"b\", \"billing_upstream\": \"ohmygpt\", \"input_price_per_mtok\": -1")) ==
          "test.json: models[1].input_price_per_mtok: must not be negative");
    CHECK(errorOf(withModel("\"id\": \"b\", \"billing_upstream\": \"ohmygpt\", "
                            "\"output_price_per_mtok\": 1e999"))
              .find("models[1].output_price_per_mtok: out of range") != std::string::npos);
    CHECK(errorOf(withModel("\"id\": \"b\", \"billing_upstream\": \"ohmygpt\", "
                            "\"cache_hit_price_per_mtok\": \"1\"")) ==
          "test.json: models[1].cache_hit_price_per_mtok: must be a number");
    CHECK(errorOf(withModel(
              "\"id\": \"b\", \"billing_upstream\": \"ohmygpt\", \"billing_multiplier\": 0")) ==
          "test.json: models[1].billing_multiplier: must be greater than 0");
    CHECK(errorOf(withModel(
              "\"id\": \"b\", \"billing_upstream\": \"ohmygpt\", \"billing_multiplier\": -1.1")) ==
          "test.json: models[1].billing_multiplier: must be greater than 0");
    CHECK(
        errorOf(withModel("\"id\": \"b\", \"billing_upstream\": \"ohmygpt\"", "\"port\": 70000")) ==
        "test.json: port: 70000 is out of range (1-65535)");
    CHECK(errorOf(withModel("\"id\": \"b\", \"billing_upstream\": \"ohmygpt\"", "\"port\": 0")) ==
          "test.json: port: 0 is out of range (1-65535)");
}

TEST_CASE("every problem is listed, one per line") {
    std::string msg = errorOf(
        withModel("\"billing_multiplier\": 0, \"input_price_per_mtok\": -3", "\"port\": -1"));
    CHECK(msg.find("test.json: port:") != std::string::npos);
    CHECK(msg.find("models[1].billing_multiplier") != std::string::npos);
    CHECK(msg.find("models[1].input_price_per_mtok") != std::string::npos);
    CHECK(msg.find("models[1].id: is missing") != std::string::npos);
}

TEST_CASE("unknown keys are warnings; _comment keys are ignored") {
    auto r =
        parseConfig(withModel("\"id\": \"b\", \"billing_upstream\": \"ohmygpt\", \"colour\": 1, "
                              "\"_comment_x\": \"hi\"",
                              "\"_comment\": \"x\", \"port\": 1, \"extra\": true"),
                    "w.json");
    REQUIRE(r.ok());
    REQUIRE(r->warnings.size() == 2);
    CHECK(r->warnings[0] == "w.json: extra: unknown key (ignored)");
    CHECK(r->warnings[1] == "w.json: models[1].colour: unknown key (ignored)");
}

TEST_CASE("defaults and trollproxy settings") {
    auto r = parseConfig(withModel("\"id\": \"b\", \"billing_upstream\": \"ohmygpt\"",
                                   "\"trollproxy\": {\"ledger_failure_mode\": \"fail_open\", "
                                   "\"rate_limit_per_minute\": 5, \"ledger_timeout_ms\": 750}"),
                         "s.json");
    REQUIRE(r.ok());
    CHECK(r->port == 8000);
    CHECK(r->settings.ledgerFailureMode == LedgerFailureMode::FailOpen);
    CHECK(r->settings.rateLimitPerMinute == 5);
    CHECK(r->settings.ledgerTimeoutMs == 750);
    CHECK(errorOf(withModel("\"id\": \"b\", \"billing_upstream\": \"ohmygpt\"",
                            "\"trollproxy\": {\"ledger_timeout_ms\": 0}"))
              .find("trollproxy.ledger_timeout_ms") != std::string::npos);
    const ModelConfig* b = r->findModel("b");
    REQUIRE(b);
    CHECK(b->upstreamModelId == "b");
    CHECK(b->prices.multiplier.billionths == 1'000'000'000);
    CHECK_FALSE(parseConfig(withModel("\"id\": \"b\", \"billing_upstream\": \"ohmygpt\"",
                                      "\"trollproxy\": {\"ledger_failure_mode\": \"maybe\"}"),
                            "s.json"));
    CHECK_FALSE(parseConfig(
        withModel(
            "\"id\": \"b\", \"billing_upstream\": \"ohmygpt\"",
            "\"endpoints\": [{\"base_url\": \"https://h/v1/messages\", \"api_key\": \"sk\"}]"),
        "s.json"));
}

TEST_CASE("trollproxy.metrics_listen: HOST:PORT, off or empty") {
    auto with = [](const std::string& value) {
        return withModel("\"id\": \"b\", \"billing_upstream\": \"ohmygpt\"",
                         "\"trollproxy\": {\"metrics_listen\": " + value + "}");
    };
    auto defaults =
        parseConfig(withModel("\"id\": \"b\", \"billing_upstream\": \"ohmygpt\""), "s.json");
    REQUIRE(defaults.ok());
    CHECK(defaults->settings.metricsListen == "127.0.0.1:9464");
    for (auto [value, expected] : {std::pair{"\"0.0.0.0:9100\"", "0.0.0.0:9100"},
                                   {"\"127.0.0.1:0\"", "127.0.0.1:0"},
                                   {"\"off\"", ""},
                                   {"\"\"", ""}}) {
        auto r = parseConfig(with(value), "s.json");
        REQUIRE(r.ok());
        CHECK(r->settings.metricsListen == expected);
    }
    for (const char* bad :
         {"\"9464\"", "\":9464\"", "\"localhost:70000\"", "\"localhost:x\"", "9464"})
        CHECK(errorOf(with(bad)).find("trollproxy.metrics_listen") != std::string::npos);
}

TEST_CASE("trollproxy.forward_headers: names and prefixes, never credentials") {
    auto with = [](const std::string& value) {
        return withModel("\"id\": \"b\", \"billing_upstream\": \"ohmygpt\"",
                         "\"trollproxy\": {\"forward_headers\": " + value + "}");
    };
    auto ok = parseConfig(with(R"(["X-Fake-*", "x-request-tag"])"), "s.json");
    REQUIRE(ok.ok());
    CHECK(ok->settings.forwardHeaders == std::vector<std::string>{"x-fake-*", "x-request-tag"});
    for (const char* bad : {R"("x-a")", R"(["*"])", R"(["Authorization"])", R"(["x-api-key"])",
                            R"(["cookie"])", R"(["a b"])", R"(["x-*-y"])", R"([""])", R"([1])"})
        CHECK(errorOf(with(bad)).find("trollproxy.forward_headers") != std::string::npos);
}
