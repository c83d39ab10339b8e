// ProxyService in one process: a scripted upstream, a SQLite ledger and a manual clock, so that
// expiries, windows and deadlines are reached by setting the time instead of waiting for it.
#include <atomic>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <stdexcept>

#include <doctest/doctest.h>
#include <unistd.h>

#include "trollproxy/ledger_admin.hpp"
#include "trollproxy/trollproxy.hpp"

using namespace trollproxy;

namespace {

class ManualClock final : public Clock {
public:
    std::int64_t wallMs() const override { return wallMs_.load(); }
    std::int64_t steadyNs() const override { return steadyMs_.load() * 1'000'000; }
    void advance(std::int64_t ms) {
        wallMs_ += ms;
        steadyMs_ += ms;
    }

private:
    std::atomic<std::int64_t> wallMs_{1'800'000'000'000};
    std::atomic<std::int64_t> steadyMs_{1'000'000};
};

// One scripted answer: status, headers, body pieces; `onRead` runs before each piece.
struct Script {
    int status = 200;
    HeaderList headers{{"content-type", "application/json"}};
    std::vector<std::string> pieces;
    std::function<void(std::size_t)> onRead;
};

class ScriptedTransfer final : public UpstreamTransfer {
public:
    explicit ScriptedTransfer(Script s) : s_(std::move(s)) {}
    int status() const override { return s_.status; }
    const HeaderList& headers() const override { return s_.headers; }
    std::string header(std::string_view name) const override {
        for (const auto& [k, v] : s_.headers)
            if (k == name)
                return v;
        return {};
    }
    Result<bool> read(std::string& out) override {
        if (cancelled_ || next_ >= s_.pieces.size())
            return false;
        if (s_.onRead)
            s_.onRead(next_);
        out += s_.pieces[next_++];
        return true;
    }
    void cancel() override { cancelled_ = true; }

private:
    Script s_;
    std::size_t next_ = 0;
    bool cancelled_ = false;
};

// Answers each request with the next script; records the keys it was sent with.
class ScriptedUpstream final : public Upstream {
public:
    Result<std::unique_ptr<UpstreamTransfer>> start(const UpstreamRequest& r) override {
        std::lock_guard lock(mutex_);
        for (const auto& [k, v] : r.headers)
            if (k == "Authorization")
                keys.push_back(v.substr(7));
        if (scripts.empty())
            return Error{ErrorCode::Unavailable, "no script"};
        Script s = std::move(scripts.front());
        scripts.pop_front();
        return std::unique_ptr<UpstreamTransfer>(new ScriptedTransfer(std::move(s)));
    }
    std::mutex mutex_;
    std::deque<Script> scripts;
    std::vector<std::string> keys;
};

std::string ev(const std::string& name, const std::string& data) {
    return "event: " + name + "\ndata: " + data + "\n\n";
}

// An Anthropic stream: `deltas` text pieces, then `output` tokens reported at the end.
Script anthropicStream(int deltas, int output) {
    Script s;
    s.headers = {{"content-type", "text/event-stream"}};
    s.pieces.push_back(ev("message_start",
                          R"({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":1}}})"));
    for (int i = 0; i < deltas; ++i)
        s.pieces.push_back(ev("content_block_delta",
                              R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"abcd"}})"));
    s.pieces.push_back(ev("message_delta", R"({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":)" +
                                               std::to_string(output) + "}}") +
                       ev("message_stop", R"({"type":"message_stop"})"));
    return s;
}

Script anthropicWhole(int output) {
    Script s;
    s.pieces.push_back(R"({"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":)" +
                       std::to_string(output) + "}}");
    return s;
}

Script refusal(int status, const std::string& retryAfter) {
    Script s;
    s.status = status;
    s.headers.emplace_back("retry-after", retryAfter);
    s.pieces.push_back(R"({"type":"error","error":{"type":"rate_limit_error","message":"slow down"}})");
    return s;
}

struct StringWriter final : ResponseWriter {
    std::string out;
    bool write(std::string_view b) override {
        out += b;
        return true;
    }
};

// The service under test, with its clock, upstream and ledger in reach.
struct Rig {
    std::string dir;
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
    ScriptedUpstream* upstream = nullptr;
    std::unique_ptr<LedgerAdmin> admin;
    std::unique_ptr<CreditLedger> ledger; // a second handle, for sweeps
    std::unique_ptr<ProxyService> service;
    std::string key;

    explicit Rig(const std::string& settings, const std::string& usd = "10") {
        char tmpl[] = "/tmp/trollproxy-service-XXXXXX";
        dir = mkdtemp(tmpl);
        std::string uri = "sqlite:" + dir + "/ledger.db";
        std::string json = R"({"port": 8000,
          "endpoints": [{"name": "ant", "base_url": "http://upstream.invalid/v1/messages"}],
          "models": [{"id": "m", "billing_upstream": "openhands", "input_price_per_mtok": 1,
                      "output_price_per_mtok": 1000}],
          "trollproxy": {"journal_path": ")" + dir + R"(/journal", )" + settings + "}}";
        auto cfg = parseConfig(json, "test");
        REQUIRE_MESSAGE(cfg, cfg.error().message);
        admin = std::move(*openLedgerAdmin(uri));
        REQUIRE(admin->addUser("u"));
        key = *admin->addKey("u");
        REQUIRE(admin->credit("u", BalanceField::CreditsNew, *Money::parse(usd)));
        ledger = std::move(*openLedger(uri));
        ServiceParts parts;
        parts.ledger = std::move(*openLedger(uri));
        auto up = std::make_unique<ScriptedUpstream>();
        upstream = up.get();
        parts.upstream = std::move(up);
        parts.keys.getenv = [](const std::string& n) {
            return n == "TROLLPROXY_UPSTREAM_KEYS" ? std::string("k1,k2") : std::string();
        };
        parts.clock = clock;
        auto svc = ProxyService::create(std::move(*cfg), std::move(parts));
        REQUIRE_MESSAGE(svc, svc.error().message);
        service = std::move(*svc);
    }
    ~Rig() {
        service.reset();
        std::filesystem::remove_all(dir);
    }

    HttpResponse post(bool stream, int maxTokens = 1000) {
        HttpRequest r;
        r.method = "POST";
        r.path = "/v1/messages";
        r.headers = {{"x-api-key", key}, {"content-type", "application/json"}};
        r.body = std::string(R"({"model":"m",)") + (stream ? R"("stream":true,)" : "") +
                 R"("max_tokens":)" + std::to_string(maxTokens) +
                 R"(,"messages":[{"role":"user","content":"x"}]})";
        return service->handle(r);
    }
    Money balance() { return admin->balance("u")->creditsNew; }
    std::string header(const HttpResponse& r, std::string_view name) {
        for (const auto& [k, v] : r.headers)
            if (k == name)
                return v;
        return {};
    }
};

} // namespace

TEST_CASE("a stream that outlives hold_ttl_seconds keeps its hold: the sweep never frees it") {
    Rig rig(R"("hold_ttl_seconds": 900)");
    Script s = anthropicStream(6, 500);
    std::int64_t swept = 0;
    // Each piece arrives 400 s after the one before; the sweep runs with every piece.
    s.onRead = [&](std::size_t) {
        rig.clock->advance(400'000);
        auto n = rig.ledger->sweepExpiredHolds(rig.clock->wallMs());
        REQUIRE(n);
        swept += *n;
    };
    rig.upstream->scripts.push_back(std::move(s));
    HttpResponse r = rig.post(true);
    REQUIRE(r.stream);
    StringWriter w;
    r.stream(w);
    CHECK(w.out.find("message_stop") != std::string::npos);
    CHECK(swept == 0); // 3,200 s of stream, ttl 900 s: renewed, never expired
    // 500 output tokens at $1000/Mtok and 10 input tokens at $1/Mtok.
    CHECK(rig.balance() == *Money::parse("9.49999"));
    CHECK(*rig.ledger->sweepExpiredHolds(rig.clock->wallMs() + 10'000'000) == 0);
}

TEST_CASE("the caller's rate limit window reopens when the clock says a minute has passed") {
    Rig rig(R"("rate_limit_per_minute": 2)");
    for (int i = 0; i < 3; ++i)
        rig.upstream->scripts.push_back(anthropicWhole(10));
    CHECK(rig.post(false).status == 200);
    CHECK(rig.post(false).status == 200);
    HttpResponse limited = rig.post(false);
    CHECK(limited.status == 429);
    CHECK(rig.header(limited, "Retry-After") != "");
    CHECK(limited.body.find("rate_limit_error") != std::string::npos);
    rig.clock->advance(120'000);
    CHECK(rig.post(false).status == 200);
}

TEST_CASE("an upstream key that answers 429 cools for its Retry-After, then is used again") {
    Rig rig("\"rate_limit_per_minute\": 0");
    // The first key tried is refused with Retry-After 30; the other serves.
    rig.upstream->scripts.push_back(refusal(429, "30"));
    rig.upstream->scripts.push_back(anthropicWhole(10));
    REQUIRE(rig.post(false).status == 200);
    REQUIRE(rig.upstream->keys.size() == 2);
    const std::string cooling = rig.upstream->keys[0];
    const std::string other = rig.upstream->keys[1];
    CHECK(cooling != other);
    for (int i = 0; i < 3; ++i) {
        rig.upstream->scripts.push_back(anthropicWhole(10));
        CHECK(rig.post(false).status == 200);
        CHECK(rig.upstream->keys.back() == other);
    }
    rig.clock->advance(31'000);
    bool usedAgain = false;
    for (int i = 0; i < 2; ++i) {
        rig.upstream->scripts.push_back(anthropicWhole(10));
        CHECK(rig.post(false).status == 200);
        usedAgain |= rig.upstream->keys.back() == cooling;
    }
    CHECK(usedAgain);
}

TEST_CASE("drain cuts a running stream at the end of the grace period and bills what was served") {
    Rig rig("\"hold_ttl_seconds\": 900");
    Script s = anthropicStream(8, 500);
    s.onRead = [&](std::size_t i) {
        if (i == 3) {
            rig.service->drain(1'000);
            rig.clock->advance(2'000);
        }
    };
    rig.upstream->scripts.push_back(std::move(s));
    HttpResponse r = rig.post(true);
    StringWriter w;
    r.stream(w);
    CHECK(w.out.find("message_stop") == std::string::npos); // cut
    auto logs = rig.admin->usage("u", 10);
    REQUIRE(logs->size() == 1);
    CHECK((*logs)[0].usage.estimated);
    CHECK((*logs)[0].cost.nanos > 0);
    CHECK(rig.balance() + (*logs)[0].cost == *Money::parse("10"));
}

TEST_CASE("a refusal for insufficient credits is in the request log, uncharged") {
    Rig rig("\"hold_ttl_seconds\": 900", "0.5");
    HttpResponse r = rig.post(false, 1000); // holds 1 USD of output
    CHECK(r.status == 402);
    CHECK(r.body.find("billing_error") != std::string::npos);
    auto logs = rig.admin->usage("u", 10);
    REQUIRE(logs->size() == 1);
    CHECK((*logs)[0].statusCode == 402);
    CHECK((*logs)[0].cost == Money{});
    CHECK(!(*logs)[0].success);
    CHECK(rig.balance() == *Money::parse("0.5"));
    CHECK(rig.upstream->keys.empty()); // nothing reached the upstream
}

TEST_CASE("a stream that throws is answered by the catch-all and its hold goes back") {
    Rig rig("\"hold_ttl_seconds\": 900");
    Script s = anthropicStream(4, 500);
    s.onRead = [](std::size_t i) {
        if (i == 2)
            throw std::runtime_error("boom");
    };
    rig.upstream->scripts.push_back(std::move(s));
    {
        HttpResponse r = rig.post(true);
        StringWriter w;
        r.stream(w); // must not throw
        CHECK(w.out.find("message_start") != std::string::npos);
    }
    // The exchange ended without a settlement: its hold was released.
    CHECK(rig.balance() == *Money::parse("10"));
    CHECK(*rig.ledger->sweepExpiredHolds(rig.clock->wallMs() + 10'000'000) == 0);
}

TEST_CASE("a revoked key is refused once auth_cache_ms has passed, and at once with 0") {
    for (int cacheMs : {1000, 0}) {
        CAPTURE(cacheMs);
        Rig rig("\"auth_cache_ms\": " + std::to_string(cacheMs));
        for (int i = 0; i < 3; ++i)
            rig.upstream->scripts.push_back(anthropicWhole(10));
        REQUIRE(rig.post(false).status == 200);
        REQUIRE(rig.admin->revokeKey(rig.key));
        if (cacheMs > 0) {
            rig.clock->advance(cacheMs / 2);
            CHECK(rig.post(false).status == 200); // within the bound: still trusted
            rig.clock->advance(cacheMs / 2 + 1);
        }
        HttpResponse refused = rig.post(false);
        CHECK(refused.status == 401);
        CHECK(refused.body.find("revoked") != std::string::npos);
    }
}
