// End-to-end: nginx with configs/nginx/nginx.conf in front of both production configs, one ledger:
// each domain bills its own pool, exactly, on both API formats, streaming included.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <simdjson.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "deployment.hpp"

using namespace e2e;
using trollproxy::Balance;
using trollproxy::ModelConfig;
using trollproxy::Money;
using trollproxy::Pool;
using trollproxy::Usage;

namespace doctest {
template <> struct StringMaker<Money> {
    static String convert(const Money& m) { return m.toString().c_str(); }
};
} // namespace doctest

namespace {

// Token counts in the x-fake-usage order: input (uncached), output, cache write, cache read.
Usage tokens(std::int64_t in, std::int64_t out, std::int64_t cacheWrite, std::int64_t cacheRead) {
    Usage u;
    u.uncachedInput = in;
    u.output = out;
    u.cacheWrite = cacheWrite;
    u.cacheRead = cacheRead;
    return u;
}

enum class Format { OpenAI, Anthropic };

const char* pathOf(Format f) {
    return f == Format::OpenAI ? "/v1/chat/completions" : "/v1/messages";
}

// The same body suits both formats: both need model, max_tokens and messages.
std::string requestBody(const std::string& model, bool stream) {
    std::string b = R"({"model":")" + model +
                    R"(","max_tokens":4096,"messages":[{"role":"user","content":"Hello"}])";
    return b + (stream ? R"(,"stream":true})" : "}");
}

// A request through nginx with usage chosen by the test upstream's x-fake-usage
// header; OpenAI-format answers carry it the way LiteLLM (OpenHands) does.
harness::RawResponse ask(const std::string& host, Format f, const std::string& model, bool stream,
                         const std::string& key, const Usage& u,
                         std::map<std::string, std::string> extra = {}) {
    extra["Authorization"] = "Bearer " + key;
    extra["x-fake-usage"] = std::to_string(u.uncachedInput) + "," + std::to_string(u.output) + "," +
                            std::to_string(u.cacheWrite) + "," + std::to_string(u.cacheRead);
    if (f == Format::OpenAI)
        extra["x-fake-usage-style"] = "litellm";
    return viaNginx(host, "POST", pathOf(f), requestBody(model, stream), extra);
}

// The request log entry of one request, waiting for a stream's settlement.
trollproxy::LogEntry logEntry(const std::string& user, const std::string& requestId) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline) {
        auto entries = deployment().ledger->usage(user, 20);
        REQUIRE(entries);
        for (const auto& e : *entries) {
            if (e.requestId == requestId)
                return e;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL("no request log entry for " << requestId);
    return {};
}

// What the test upstream received last.
struct Seen {
    std::string path, model, authorization, userAgent;
};

Seen lastUpstreamRequest() {
    harness::RawResponse r = harness::get(deployment().upstream->port(), "/_requests");
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    REQUIRE(!parser.parse(r.body).get(doc));
    simdjson::dom::array all = doc.get_array();
    REQUIRE(all.size() > 0);
    simdjson::dom::element last = all.at(all.size() - 1);
    Seen s;
    std::string_view v;
    if (!last["path"].get_string().get(v))
        s.path = v;
    for (auto [k, val] : last["headers"].get_object()) {
        std::string name(k);
        for (auto& c : name)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (!val.get_string().get(v)) {
            if (name == "authorization")
                s.authorization = v;
            if (name == "user-agent")
                s.userAgent = v;
        }
    }
    std::string_view body;
    if (!last["body"].get_string().get(body)) {
        simdjson::dom::parser p2;
        simdjson::dom::element b;
        if (!p2.parse(std::string(body)).get(b) && !b["model"].get_string().get(v))
            s.model = v;
    }
    return s;
}

// Checks one served request: the answer, what the upstream got, the log entry,
// and that exactly the cost left exactly the right balance fields.
void checkServed(const std::string& host, Format f, const ModelConfig& m, bool stream,
                 const std::string& user, const std::string& key, const Usage& u) {
    CAPTURE(host);
    CAPTURE(m.id);
    CAPTURE(pathOf(f));
    CAPTURE(stream);
    Balance before = deployment().balance(user);
    harness::RawResponse r = ask(host, f, m.id, stream, key, u);
    REQUIRE(r.status == 200);
    if (stream) {
        CHECK(r.headers["content-type"].find("text/event-stream") == 0);
        CHECK(r.body.find(f == Format::OpenAI ? "data: [DONE]" : "event: message_stop") !=
              std::string::npos);
    } else {
        CHECK(r.body.find(f == Format::OpenAI ? "\"choices\"" : "\"type\":\"message\"") !=
              std::string::npos);
    }
    Seen seen = lastUpstreamRequest();
    CHECK(seen.path == pathOf(f));
    CHECK(seen.model == m.upstreamModelId);
    CHECK(seen.authorization == std::string("Bearer ") + kUpstreamKey);
    CHECK(seen.userAgent == "openhands-cli/1.0.0");

    const Money cost = trollproxy::priceUsage(m.prices, u);
    REQUIRE(cost.nanos > 0);
    trollproxy::LogEntry e = logEntry(user, r.headers["x-request-id"]);
    CHECK(e.model == m.id);
    CHECK(e.creditType == (host == kChatHost ? "openhands" : "ohmygpt"));
    CHECK(e.statusCode == 200);
    CHECK(e.usage == u);
    CHECK(e.cost == cost);
    CHECK(e.shortfall == Money{});

    Balance after = deployment().balance(user);
    if (host == kChatHost) {
        CHECK(after.creditsNew.nanos == before.creditsNew.nanos - cost.nanos);
        CHECK(after.creditsNewUsed.nanos == before.creditsNewUsed.nanos + cost.nanos);
        CHECK(after.credits == before.credits);
        CHECK(after.refCredits == before.refCredits);
        CHECK(after.creditsUsed == before.creditsUsed);
    } else {
        std::int64_t fromCredits = std::min(before.credits.nanos, cost.nanos);
        CHECK(after.credits.nanos == before.credits.nanos - fromCredits);
        CHECK(after.refCredits.nanos == before.refCredits.nanos - (cost.nanos - fromCredits));
        CHECK(after.creditsUsed.nanos == before.creditsUsed.nanos + cost.nanos);
        CHECK(after.creditsNew == before.creditsNew);
        CHECK(after.creditsNewUsed == before.creditsNewUsed);
    }
    CHECK(after.totalOutputTokens == before.totalOutputTokens + u.output);
}

const ModelConfig& model(const trollproxy::Config& cfg, const std::string& id) {
    const ModelConfig* m = cfg.findModel(id);
    REQUIRE(m);
    return *m;
}

} // namespace

TEST_CASE("nginx routes each domain to its own proxy and refuses other hosts") {
    for (const char* host : {kChatHost, kChat2Host}) {
        CAPTURE(host);
        CHECK(viaNginx(host, "GET", "/health", "", {}).status == 200);
        CHECK(viaNginx(host, "GET", "/ready", "", {}).status == 200);
    }
    // Gemini 3 Pro Preview is offered on chat only: the model lists show which proxy answered.
    CHECK(viaNginx(kChatHost, "GET", "/v1/models", "", {}).body.find("gemini-3-pro-preview") !=
          std::string::npos);
    harness::RawResponse chat2Models = viaNginx(kChat2Host, "GET", "/v1/models", "", {});
    CHECK(chat2Models.status == 200);
    CHECK(chat2Models.body.find("claude-opus-4-5-20251101") != std::string::npos);
    CHECK(chat2Models.body.find("gemini-3-pro-preview") == std::string::npos);
    // No cross-origin browser calls: a preflight and a request from another site get
    // no Access-Control-Allow-Origin.
    harness::RawResponse preflight =
        viaNginx(kChat2Host, "OPTIONS", "/v1/chat/completions", "",
                 {{"Origin", "https://evil.example"},
                  {"Access-Control-Request-Method", "POST"},
                  {"Access-Control-Request-Headers", "authorization"}});
    CHECK(preflight.status != 0);
    CHECK(preflight.headers.count("access-control-allow-origin") == 0);
    harness::RawResponse cross =
        viaNginx(kChatHost, "GET", "/v1/models", "", {{"Origin", "https://evil.example"}});
    CHECK(cross.status == 200);
    CHECK(cross.headers.count("access-control-allow-origin") == 0);
    // Metrics stay inside: nginx does not pass them on.
    CHECK(viaNginx(kChatHost, "GET", "/metrics", "", {}).status == 403);
    CHECK(viaNginx(kChat2Host, "GET", "/metrics", "", {}).status == 403);
    // Unknown host: nginx closes the connection without an answer (return 444).
    CHECK(viaNginx("other.example", "GET", "/health", "", {}, 5).status == 0);
}

TEST_CASE("every model answers on both formats on both domains and is billed exactly to its pool") {
    Deployment& d = deployment();
    const std::string user = userName("alice");
    const std::string key = d.user(user, "50", "0", "50");
    int i = 0;
    for (const auto* host : {kChatHost, kChat2Host}) {
        const trollproxy::Config& cfg =
            host == std::string(kChatHost) ? d.chatConfig : d.chat2Config;
        for (const ModelConfig& m : cfg.models) {
            for (Format f : {Format::OpenAI, Format::Anthropic}) {
                for (bool stream : {false, true}) {
                    ++i;
                    // Distinct counts per request, with cache writes and reads.
                    Usage u = tokens(1000 + 37 * i, 40 + 3 * i, 500 + 11 * i, 120 + 5 * i);
                    checkServed(host, f, m, stream, user, key, u);
                }
            }
        }
    }
    CHECK(i == 4 * static_cast<int>(d.chatConfig.models.size() + d.chat2Config.models.size()));
}

TEST_CASE("prices are those of the production files: a hand-computed Sonnet charge") {
    // Sonnet 4.5: $3 in, $15 out, $3.75 cache write, $0.30 cache read per Mtok, x 1.1.
    // 1000 x 3000 + 200 x 15000 + 100 x 3750 + 400 x 300 nano-USD = 6,495,000; x 1.1 = 7,144,500.
    Deployment& d = deployment();
    Usage u = tokens(1000, 200, 100, 400);
    for (const auto& cfg : {d.chatConfig, d.chat2Config})
        CHECK(trollproxy::priceUsage(model(cfg, "claude-sonnet-4-5").prices, u) ==
              Money{7'144'500});
}

TEST_CASE("chat2 takes credits first, then refCredits; chat refuses a user without creditsNew") {
    Deployment& d = deployment();
    const std::string user = userName("bob");
    const std::string key = d.user(user, "0.001", "1", "0");
    const ModelConfig& sonnet2 = model(d.chat2Config, "claude-sonnet-4-5-20250929");
    Usage u = tokens(1000, 200, 0, 0); // 0.0066 USD: more than the 0.001 in credits
    checkServed(kChat2Host, Format::Anthropic, sonnet2, false, user, key, u);
    Balance b = d.balance(user);
    CHECK(b.credits == Money{});
    CHECK(b.refCredits == *Money::parse("0.9944"));
    CHECK(b.creditsUsed == *Money::parse("0.0066"));
    // credits is empty now: the next request is paid from refCredits alone.
    checkServed(kChat2Host, Format::OpenAI, sonnet2, true, user, key, u);
    CHECK(d.balance(user).refCredits == *Money::parse("0.9878"));

    // creditsNew is 0: chat refuses, and neither pool moves.
    for (Format f : {Format::OpenAI, Format::Anthropic}) {
        harness::RawResponse r = ask(kChatHost, f, "claude-sonnet-4-5-20250929", false, key, u);
        CHECK(r.status == 402);
        CHECK(r.body.find("insufficient") != std::string::npos);
    }
    Balance after = d.balance(user);
    CHECK(after.credits == b.credits);
    CHECK(after.refCredits == *Money::parse("0.9878"));
    CHECK(after.creditsNew == Money{});
    CHECK(after.creditsNewUsed == Money{});
}

TEST_CASE("a user with only creditsNew gets 402 on chat2 and is served on chat") {
    Deployment& d = deployment();
    const std::string user = userName("carol");
    const std::string key = d.user(user, "0", "0", "1");
    Usage u = tokens(2000, 300, 0, 0);
    harness::RawResponse oai = ask(kChat2Host, Format::OpenAI, "gpt-5.1", false, key, u);
    CHECK(oai.status == 402);
    CHECK(oai.body.find(R"("type":"insufficient_quota")") != std::string::npos);
    CHECK(oai.body.find(R"("code":"insufficient_credits")") != std::string::npos);
    harness::RawResponse ant = ask(kChat2Host, Format::Anthropic, "claude-haiku-4-5", true, key, u);
    CHECK(ant.status == 402);
    CHECK(ant.body.find(R"("type":"error")") != std::string::npos);
    CHECK(d.balance(user).creditsNew == *Money::parse("1"));

    checkServed(kChatHost, Format::OpenAI, model(d.chatConfig, "gpt-5.1"), false, user, key, u);
    checkServed(kChatHost, Format::Anthropic, model(d.chatConfig, "claude-haiku-4-5"), true, user,
                key, u);
    Balance b = d.balance(user);
    CHECK(b.credits == Money{});
    CHECK(b.refCredits == Money{});
}

TEST_CASE("streams pass through nginx while they are produced") {
    Deployment& d = deployment();
    const std::string user = userName("dave");
    const std::string key = d.user(user, "5", "0", "5");
    constexpr int kChunks = 6, kDelayMs = 100;
    for (const auto* host : {kChatHost, kChat2Host}) {
        for (Format f : {Format::OpenAI, Format::Anthropic}) {
            CAPTURE(host);
            CAPTURE(pathOf(f));
            harness::RawResponse r = ask(
                host, f, "claude-opus-4-5-20251101", true, key, tokens(100, 18, 0, 0),
                {{"x-fake-chunks", std::to_string(kChunks)},
                 {"x-fake-chunk-delay-ms", std::to_string(kDelayMs)},
                 {"Accept-Encoding", "gzip, deflate"}}); // as the SDKs send: gzip must not hold it
            REQUIRE(r.status == 200);
            // Arrival time of the first content event and of the end of the stream.
            const std::string firstDelta =
                f == Format::OpenAI ? R"("delta":{"content":)" : "content_block_delta";
            const std::string end = f == Format::OpenAI ? "[DONE]" : "message_stop";
            double tFirst = -1, tEnd = -1;
            int arrivals = 0;
            for (const auto& [t, bytes] : r.chunks) {
                ++arrivals;
                if (tFirst < 0 && bytes.find(firstDelta) != std::string::npos)
                    tFirst = t;
                if (tEnd < 0 && bytes.find(end) != std::string::npos)
                    tEnd = t;
            }
            REQUIRE(tFirst >= 0);
            REQUIRE(tEnd >= 0);
            // The upstream spends (kChunks - 1) x kDelayMs between the first delta and
            // the end; a buffering proxy would deliver both at once.
            CHECK(tEnd - tFirst >= 0.7 * (kChunks - 1) * kDelayMs / 1000.0);
            CHECK(arrivals >= kChunks / 2);
        }
    }
    Balance b = d.balance(user);
    const Money each = trollproxy::priceUsage(
        model(d.chatConfig, "claude-opus-4-5-20251101").prices, tokens(100, 18, 0, 0));
    CHECK(b.creditsNew.nanos == Money::parse("5")->nanos - 2 * each.nanos);
    CHECK(b.credits.nanos == Money::parse("5")->nanos - 2 * each.nanos);
}

TEST_CASE("nginx passes bodies up to 50 MB and refuses larger ones") {
    Deployment& d = deployment();
    const std::string user = userName("erin");
    const std::string key = d.user(user, "0", "0", "20");
    // 3 MB: past nginx's default 1 MB limit and its in-memory body buffer.
    std::string big =
        R"({"model":"claude-haiku-4-5","max_tokens":16,"messages":[{"role":"user","content":")" +
        std::string(3 * 1024 * 1024, 'x') + R"("}]})";
    Usage u = tokens(786'000, 16, 0, 0);
    harness::RawResponse r =
        viaNginx(kChatHost, "POST", "/v1/messages", big,
                 {{"Authorization", "Bearer " + key}, {"x-fake-usage", "786000,16,0,0"}});
    REQUIRE(r.status == 200);
    const Money cost = trollproxy::priceUsage(model(d.chatConfig, "claude-haiku-4-5").prices, u);
    CHECK(logEntry(user, r.headers["x-request-id"]).cost == cost);
    CHECK(d.balance(user).creditsNew.nanos == Money::parse("20")->nanos - cost.nanos);

    // Over 50 MB: refused by nginx from the header alone. (nginx then lingers for
    // the body it refused, hence the short read.)
    std::string head =
        "POST /v1/messages HTTP/1.1\r\nHost: " + std::string(kChat2Host) +
        "\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: " +
        std::to_string(50 * 1024 * 1024 + 1) + "\r\nAuthorization: Bearer " + key + "\r\n\r\n";
    CHECK(harness::rawExchange(d.nginx->port(), head, 1).status == 413);
}

TEST_CASE("nginx limits requests per client address") {
    // Last: it uses up this address's burst (20 r/s, burst 100). Four clients at
    // once, so that a loaded machine still goes faster than 20 r/s.
    std::atomic<int> limited{0}, served{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c) {
        clients.emplace_back([&] {
            for (int i = 0; i < 250 && limited == 0; ++i) {
                int status = viaNginx(kChat2Host, "GET", "/health", "", {}).status;
                limited += status == 429;
                served += status == 200;
            }
        });
    }
    for (auto& t : clients)
        t.join();
    CHECK(limited >= 1);
    CHECK(served >= 50); // the limit is there, but not tight
}

int main(int argc, char** argv) {
    if (std::string why = missingTool(); !why.empty()) {
        std::printf("skipped: %s\n", why.c_str());
        return 77;
    }
    doctest::Context context;
    context.applyCommandLine(argc, argv);
    return context.run();
}
