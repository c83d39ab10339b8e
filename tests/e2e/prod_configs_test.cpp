// The two production configs: same models, prices, multiplier and upstream; they differ only in
// port and pool.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "trollproxy/config.hpp"

using namespace trollproxy;

namespace doctest {
template <> struct StringMaker<Money> {
    static String convert(const Money& m) { return m.toString().c_str(); }
};
template <> struct StringMaker<Factor> {
    static String convert(const Factor& f) { return f.toString().c_str(); }
};
} // namespace doctest

namespace {

Config load(const char* name) {
    const char* root = std::getenv("TROLLPROXY_SOURCE_ROOT");
    auto cfg = loadConfigFile(std::string(root ? root : "..") + "/configs/" + name);
    REQUIRE_MESSAGE(cfg, (cfg ? "" : cfg.error().message));
    return *cfg;
}

// The models tasks.md moves chat2 to (Claude Opus 4.5, Sonnet 4.5, Haiku 4.5,
// GPT 5.1, GPT-5.2, Kimi K2, GPT-5.1 Codex Max).
const std::set<std::string> kChat2Models{"claude-opus-4-5-20251101",
                                         "claude-sonnet-4-5-20250929",
                                         "claude-haiku-4-5-20251001",
                                         "gpt-5.1",
                                         "gpt-5.2",
                                         "kimi-k2-thinking",
                                         "gpt-5.1-codex-max"};
// Offered on chat only: tasks.md's list for chat2 leaves it out.
const std::set<std::string> kChatOnly{"gemini-3-pro-preview"};

} // namespace

TEST_CASE("both production configs load without warnings") {
    for (const char* name : {"config-openhands-prod.json", "config-ohmygpt-prod.json"}) {
        CAPTURE(name);
        Config cfg = load(name);
        CHECK(cfg.warnings.empty());
        CHECK(cfg.endpoints.size() == 3); // chat completions, messages, responses
    }
}

TEST_CASE("chat (8004) bills creditsNew, chat2 (8005) bills credits; both send to OpenHands") {
    Config chat = load("config-openhands-prod.json");
    Config chat2 = load("config-ohmygpt-prod.json");
    CHECK(chat.port == 8004);
    CHECK(chat2.port == 8005);
    for (const auto& m : chat.models) {
        CAPTURE(m.id);
        CHECK(m.pool == Pool::CreditsNew);
        CHECK(m.billingUpstream == "openhands");
        CHECK(m.upstream == "openhands");
    }
    for (const auto& m : chat2.models) {
        CAPTURE(m.id);
        CHECK(m.pool == Pool::Credits);
        CHECK(m.billingUpstream == "ohmygpt");
        CHECK(m.type == "ohmygpt");
        CHECK(m.upstream == "openhands");
        CHECK(m.prices.multiplier == *Factor::parse("1.1"));
    }
}

TEST_CASE("the two production configs differ only in port and pool") {
    Config chat = load("config-openhands-prod.json");
    Config chat2 = load("config-ohmygpt-prod.json");

    std::set<std::string> chatIds, chat2Ids;
    for (const auto& m : chat.models)
        chatIds.insert(m.id);
    for (const auto& m : chat2.models)
        chat2Ids.insert(m.id);
    CHECK(chat2Ids == kChat2Models);
    std::set<std::string> onlyChat;
    for (const auto& id : chatIds)
        if (!chat2Ids.count(id))
            onlyChat.insert(id);
    CHECK(onlyChat == kChatOnly);
    CHECK(chat2.models.size() == chat2Ids.size()); // no id twice

    for (const auto& m2 : chat2.models) {
        CAPTURE(m2.id);
        const ModelConfig* m = chat.findModel(m2.id);
        REQUIRE(m);
        CHECK(m2.name == m->name);
        CHECK(m2.aliases == m->aliases);
        CHECK(m2.upstream == m->upstream);
        CHECK(m2.upstreamModelId == m->upstreamModelId);
        CHECK(m2.prices.input == m->prices.input);
        CHECK(m2.prices.output == m->prices.output);
        CHECK(m2.prices.cacheWrite == m->prices.cacheWrite);
        CHECK(m2.prices.cacheRead == m->prices.cacheRead);
        CHECK(m2.prices.multiplier == m->prices.multiplier);
        CHECK(m2.batchInputPrice == m->batchInputPrice);
        CHECK(m2.batchOutputPrice == m->batchOutputPrice);
        CHECK(m2.reasoning == m->reasoning);
        CHECK(m2.thinkingBudget == m->thinkingBudget);
        // The pool is the difference (and `type`, the old system's handler name).
        CHECK(m2.pool != m->pool);
    }

    // Same upstream URLs, same request shaping.
    REQUIRE(chat.endpoints.size() == chat2.endpoints.size());
    for (std::size_t i = 0; i < chat.endpoints.size(); ++i) {
        CHECK(chat2.endpoints[i].baseUrl == chat.endpoints[i].baseUrl);
        CHECK(chat2.endpoints[i].upstream == chat.endpoints[i].upstream);
        CHECK(chat2.endpoints[i].baseUrl.rfind("https://llm-proxy.app.all-hands.dev/v1/", 0) == 0);
    }
    CHECK(chat2.userAgent == "openhands-cli/1.0.0");
    CHECK(chat2.userAgent == chat.userAgent);
    CHECK(chat2.systemPrompt == chat.systemPrompt);
    CHECK(chat2.settings.rateLimitPerMinute == chat.settings.rateLimitPerMinute);
    CHECK(chat2.settings.maxBodyBytes == chat.settings.maxBodyBytes);
    CHECK(chat2.port != chat.port);
}

TEST_CASE("both serve the Responses API and the dateless Claude names coding agents send") {
    for (const char* name : {"config-openhands-prod.json", "config-ohmygpt-prod.json"}) {
        CAPTURE(name);
        Config cfg = load(name);
        bool responses = false;
        for (const auto& ep : cfg.endpoints)
            responses |= ep.baseUrl == "https://llm-proxy.app.all-hands.dev/v1/responses";
        CHECK(responses);
        CHECK(cfg.routes() ==
              std::vector<std::string>{"POST /v1/chat/completions", "POST /v1/messages",
                                       "POST /v1/messages/count_tokens", "POST /v1/responses",
                                       "GET /v1/responses/{id}", "DELETE /v1/responses/{id}"});
        for (auto [alias, id] : {std::pair{"claude-sonnet-4-5", "claude-sonnet-4-5-20250929"},
                                 {"claude-opus-4-5", "claude-opus-4-5-20251101"},
                                 {"claude-haiku-4-5", "claude-haiku-4-5-20251001"}}) {
            CAPTURE(alias);
            const ModelConfig* m = cfg.findModel(alias);
            REQUIRE(m);
            CHECK(m->id == id);
        }
        CHECK(cfg.findModel("gpt-5.1-codex-max"));
    }
}
