// ProxyService in one process: a scripted upstream, a SQLite ledger and a manual clock, so that
// expiries, windows and deadlines are reached by setting the time instead of waiting for it.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>

#include <doctest/doctest.h>
#include <unistd.h>

#include "../support/delegating_ledger.hpp"
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
    s.pieces.push_back(ev(
        "message_start",
        R"({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":1}}})"));
    for (int i = 0; i < deltas; ++i)
        s.pieces.push_back(ev(
            "content_block_delta",
            R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"abcd"}})"));
    s.pieces.push_back(
        ev("message_delta",
           R"({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":)" +
               std::to_string(output) + "}}") +
        ev("message_stop", R"({"type":"message_stop"})"));
    return s;
}

Script anthropicWhole(int output) {
    Script s;
    s.pieces.push_back(
        R"({"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":)" +
        std::to_string(output) + "}}");
    return s;
}

Script refusal(int status, const std::string& retryAfter) {
    Script s;
    s.status = status;
    s.headers.emplace_back("retry-after", retryAfter);
    s.pieces.push_back(
        R"({"type":"error","error":{"type":"rate_limit_error","message":"slow down"}})");
    return s;
}

// A ledger whose settle() can be made to fail as if the database were down.
class FlakyLedger final : public support::DelegatingLedger {
public:
    explicit FlakyLedger(std::unique_ptr<CreditLedger> real, std::atomic<bool>& down)
        : DelegatingLedger(std::move(real)), down_(down) {}
    ReserveStatus reserve(const HoldRequest& h) override {
        if (std::this_thread::get_id() == caller)
            ++reservedOnCaller;
        if (reservesFail)
            return ReserveStatus::LedgerUnavailable;
        if (reserveLate) { // applied, but the answer never came back
            (void)real().reserve(h);
            return ReserveStatus::LedgerUnavailable;
        }
        return real().reserve(h);
    }
    SliceGrant reserveSlice(const SliceRequest& r) override {
        if (std::this_thread::get_id() == caller)
            ++slicesOnCaller;
        {
            std::lock_guard lock(askedMutex);
            slicesAsked.push_back(r);
        }
        if (reservesFail)
            return {};
        return real().reserveSlice(r);
    }
    SettleOutcome settle(const Charge& c) override {
        if (std::this_thread::get_id() == caller)
            ++settledOnCaller;
        if (down_)
            return {SettleStatus::LedgerUnavailable, {}, {}};
        return real().settle(c);
    }

    std::thread::id caller = std::this_thread::get_id(); // the test's thread
    std::atomic<int> settledOnCaller{0};
    std::atomic<int> reservedOnCaller{0};  // request holds in the ledger
    std::atomic<int> slicesOnCaller{0};    // slice refills the request waited for
    std::atomic<bool> reservesFail{false}; // holds and slices fail too, not only settle
    std::atomic<bool> reserveLate{false};  // a hold is taken, but reserve() reports a timeout
    std::mutex askedMutex;
    std::vector<SliceRequest> slicesAsked; // every refill, on any thread

private:
    std::atomic<bool>& down_;
};

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
    Config config;
    std::string uri;

    explicit Rig(
        const std::string& settings, const std::string& usd = "10",
        const std::function<void(Rig&)>& beforeService = {},
        std::function<std::unique_ptr<CreditLedger>(std::unique_ptr<CreditLedger>)> wrap = {}) {
        char tmpl[] = "/tmp/trollproxy-service-XXXXXX";
        dir = mkdtemp(tmpl);
        std::string uri = "sqlite:" + dir + "/ledger.db";
        std::string json = R"({"port": 8000,
          "endpoints": [{"name": "ant", "base_url": "http://upstream.invalid/v1/messages"}],
          "models": [{"id": "m", "billing_upstream": "openhands", "input_price_per_mtok": 1,
                      "output_price_per_mtok": 1000}],
          "trollproxy": {"journal_path": ")" +
                           dir + R"(/journal", )" + settings + "}}";
        auto cfg = parseConfig(json, "test");
        REQUIRE_MESSAGE(cfg, cfg.error().message);
        admin = std::move(*openLedgerAdmin(uri));
        REQUIRE(admin->addUser("u"));
        key = *admin->addKey("u");
        REQUIRE(admin->credit("u", BalanceField::CreditsNew, *Money::parse(usd)));
        ledger = std::move(*openLedger(uri));
        if (beforeService)
            beforeService(*this);
        config = std::move(*cfg);
        this->uri = uri;
        startService(wrap);
    }
    /// A new service process on the same ledger and journal (the old one is gone).
    void
    startService(const std::function<std::unique_ptr<CreditLedger>(std::unique_ptr<CreditLedger>)>&
                     wrap = {}) {
        service.reset();
        ServiceParts parts;
        parts.ledger = std::move(*openLedger(uri));
        if (wrap)
            parts.ledger = wrap(std::move(parts.ledger));
        auto up = std::make_unique<ScriptedUpstream>();
        upstream = up.get();
        parts.upstream = std::move(up);
        parts.keys.getenv = [](const std::string& n) {
            return n == "TROLLPROXY_UPSTREAM_KEYS" ? std::string("k1,k2") : std::string();
        };
        parts.clock = clock;
        auto svc = ProxyService::create(config, std::move(parts));
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
    std::string journal() const { return dir + "/journal"; }
    /// Waits (real time: the flusher is a real thread) until `done` holds.
    static bool waitFor(const std::function<bool()>& done, double seconds = 5) {
        for (int i = 0; i < seconds * 100; ++i) {
            if (done())
                return true;
            usleep(10'000);
        }
        return done();
    }
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

TEST_CASE(
    "journal_first: the answer goes out before the ledger settles; the flusher settles it once") {
    std::atomic<bool> down{false};
    FlakyLedger* flaky = nullptr;
    Rig rig(R"("settlement": "journal_first")", "10", {}, [&](std::unique_ptr<CreditLedger> real) {
        flaky = new FlakyLedger(std::move(real), down);
        return std::unique_ptr<CreditLedger>(flaky);
    });
    for (int i = 0; i < 20; ++i)
        rig.upstream->scripts.push_back(anthropicWhole(10));
    Money charged;
    for (int i = 0; i < 20; ++i) {
        HttpResponse r = rig.post(false, 20); // small holds: they stay until the flusher runs
        REQUIRE(r.status == 200);
        CHECK(rig.header(r, "x-trollproxy-shortfall").empty());
        charged += *Money::parse(rig.header(r, "x-trollproxy-cost"));
    }
    CHECK(charged == *Money::parse("0.2002")); // 20 × (10 in + 10 out)
    CHECK(flaky->settledOnCaller == 0);        // never on the request's thread
    CHECK(Rig::waitFor([&] { return rig.balance() + charged == *Money::parse("10"); }));
    auto logs = rig.admin->usage("u", 100);
    CHECK(logs->size() == 20);
    rig.service->stop();
    CHECK(!std::filesystem::exists(rig.journal()));
    CHECK(rig.balance() + charged == *Money::parse("10")); // nothing twice
}

TEST_CASE("journal_first: charges wait in the journal while the ledger is down, then land once") {
    std::atomic<bool> down{false};
    Rig rig(R"("settlement": "journal_first")", "10", {}, [&](std::unique_ptr<CreditLedger> real) {
        return std::unique_ptr<CreditLedger>(new FlakyLedger(std::move(real), down));
    });
    down = true;
    for (int i = 0; i < 5; ++i) {
        rig.upstream->scripts.push_back(anthropicWhole(10));
        REQUIRE(rig.post(false, 20).status == 200);
    }
    usleep(200'000);
    // Held, not settled: the holds still cover the charges, nothing is lost.
    CHECK(rig.admin->usage("u", 100)->empty());
    std::ifstream in(rig.journal());
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(std::count(all.begin(), all.end(), '\n') == 5);
    down = false;
    CHECK(Rig::waitFor([&] { return rig.admin->usage("u", 100)->size() == 5; }));
    CHECK(Rig::waitFor([&] { return rig.balance() == *Money::parse("9.94995"); }));
}

TEST_CASE("a journal left by a process that died is settled when the next one starts, once") {
    Charge c;
    c.requestId = "req_left_behind";
    c.userId = "u";
    c.model = "m";
    c.pool = Pool::CreditsNew;
    c.cost = *Money::parse("0.25");
    c.createdAtMs = 1'800'000'000'000;
    auto leave = [&](Rig& r) {
        std::ofstream(r.journal()) << encodeCharge(c) << "\n"
                                   << "{\"torn";
    };
    Rig rig("\"settlement\": \"synchronous\"", "10", leave);
    CHECK(Rig::waitFor([&] { return rig.balance() == *Money::parse("9.75"); }));
    CHECK(Rig::waitFor([&] { return !std::filesystem::exists(rig.journal()); }));
    auto logs = rig.admin->usage("u", 10);
    REQUIRE(logs->size() == 1);
    CHECK((*logs)[0].requestId == "req_left_behind");
}

TEST_CASE("synchronous settlement settles on the request's thread before answering") {
    std::atomic<bool> down{false};
    FlakyLedger* flaky = nullptr;
    Rig rig(R"("settlement": "synchronous")", "10", {}, [&](std::unique_ptr<CreditLedger> real) {
        flaky = new FlakyLedger(std::move(real), down);
        return std::unique_ptr<CreditLedger>(flaky);
    });
    rig.upstream->scripts.push_back(anthropicWhole(10));
    HttpResponse r = rig.post(false, 20);
    REQUIRE(r.status == 200);
    CHECK(flaky->settledOnCaller == 1);
    CHECK(rig.balance() + *Money::parse(rig.header(r, "x-trollproxy-cost")) == *Money::parse("10"));
}

TEST_CASE("a restarted process gives back at once the holds its previous life left") {
    Rig rig("\"hold_ttl_seconds\": 900");
    rig.upstream->scripts.push_back(anthropicWhole(10));
    HttpResponse r = rig.post(false, 20);
    REQUIRE(r.status == 200);
    const std::string id = rig.header(r, "x-request-id");
    REQUIRE(id.rfind("req_", 0) == 0);
    const std::string prefix = id.substr(0, id.find('_', 4) + 1); // "req_" + instance + "_"
    REQUIRE(prefix.size() > 5);
    const Money before = rig.balance();
    // What the process was holding when it was killed, and another instance's hold.
    const std::int64_t far = rig.clock->wallMs() + 3'600'000;
    REQUIRE(rig.ledger->reserve({prefix + "dead1", "u", Pool::CreditsNew, *Money::parse("1"),
                                 far}) == ReserveStatus::Reserved);
    REQUIRE(rig.ledger->reserve({"req_0therins_dead2", "u", Pool::CreditsNew, *Money::parse("2"),
                                 far}) == ReserveStatus::Reserved);
    REQUIRE(rig.balance() == before - *Money::parse("3"));
    rig.startService();                                  // same journal: same instance
    CHECK(rig.balance() == before - *Money::parse("2")); // its own hold back, the other's kept
    CHECK(rig.admin->balance("u")->heldCreditsNew == *Money::parse("2"));
}

TEST_CASE("request ids sort by time, so the ledger's log index takes them at its end") {
    Rig rig("\"rate_limit_per_minute\": 0");
    std::vector<std::string> ids;
    for (int i = 0; i < 8; ++i) {
        rig.upstream->scripts.push_back(anthropicWhole(10));
        HttpResponse r = rig.post(false, 20);
        REQUIRE(r.status == 200);
        ids.push_back(rig.header(r, "x-request-id"));
        rig.clock->advance(1);
    }
    CHECK(std::is_sorted(ids.begin(), ids.end()));
    CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == ids.size());
    const std::string& id = ids.front();
    const std::string suffix = id.substr(id.find('_', 4) + 1);
    REQUIRE(suffix.size() == 24);
    CHECK(std::stoll(suffix.substr(0, 11), nullptr, 16) == rig.clock->wallMs() - 8);
}

TEST_CASE("one service per journal_path: a second one is refused while the first lives") {
    Rig rig("\"hold_ttl_seconds\": 900");
    ServiceParts parts;
    parts.ledger = std::move(*openLedger(rig.uri));
    parts.upstream = std::make_unique<ScriptedUpstream>();
    parts.clock = rig.clock;
    auto second = ProxyService::create(rig.config, std::move(parts));
    REQUIRE_FALSE(second);
    CHECK(second.error().code == ErrorCode::Conflict);
    CHECK(second.error().message.find("each instance needs its own journal_path") !=
          std::string::npos);
    rig.startService(); // the first one gone, the next takes its place
    rig.upstream->scripts.push_back(anthropicWhole(10));
    CHECK(rig.post(false, 20).status == 200);
}

// Budget slices: requests hold from memory, charges draw on the process's slice.

namespace {

const char* kSlices = R"("settlement": "journal_first", "slice_max_usd": 2, "slice_fraction": 0.5)";

std::unique_ptr<Rig> flakyRig(const std::string& settings, const std::string& usd,
                              std::atomic<bool>& down, FlakyLedger*& flaky) {
    return std::make_unique<Rig>(settings, usd, nullptr, [&](std::unique_ptr<CreditLedger> real) {
        flaky = new FlakyLedger(std::move(real), down);
        return std::unique_ptr<CreditLedger>(flaky);
    });
}

} // namespace

TEST_CASE("slices: after one refill, requests reserve and settle without the ledger on their "
          "thread; the money is exact after the slice goes back") {
    std::atomic<bool> down{false};
    FlakyLedger* flaky = nullptr;
    auto rig = flakyRig(kSlices, "10", down, flaky);
    rig->service->start(); // the refiller tops the slice up in the background
    Money charged;
    for (int i = 0; i < 50; ++i) {
        rig->upstream->scripts.push_back(anthropicWhole(10));
        HttpResponse r = rig->post(false, 20);
        REQUIRE(r.status == 200);
        CHECK(rig->header(r, "x-trollproxy-shortfall").empty());
        charged += *Money::parse(rig->header(r, "x-trollproxy-cost"));
        // The first slice (4 holds of about 0.021 USD) covers four requests
        // before it reaches its low mark.
        if (i == 3)
            CHECK(flaky->slicesOnCaller == 1);
    }
    CHECK(charged == *Money::parse("0.5005"));
    CHECK(flaky->reservedOnCaller == 0);
    CHECK(flaky->settledOnCaller == 0);
    // While the slice is out, the balance is lower by what it holds unspent.
    CHECK(Rig::waitFor([&] { return rig->admin->usage("u", 100)->size() == 50; }));
    Balance b = *rig->admin->balance("u");
    CHECK(b.heldCreditsNew.nanos > 0);
    CHECK(b.creditsNew + b.heldCreditsNew + charged == *Money::parse("10"));
    rig->service->stop(); // the slice goes back
    CHECK(rig->admin->balance("u")->heldCreditsNew == Money{});
    CHECK(rig->balance() + charged == *Money::parse("10"));
}

TEST_CASE("slices: a reloaded config sizes the background refills, and turns them off") {
    std::atomic<bool> down{false};
    FlakyLedger* flaky = nullptr;
    auto rig = flakyRig(kSlices, "10", down, flaky); // slice_max_usd 2, slice_fraction 0.5
    rig->service->start();                           // the refiller starts with that
    Config smaller = rig->config;
    smaller.settings.sliceMax = *Money::parse("0.05");
    smaller.settings.sliceFreePermille = 250;
    REQUIRE(rig->service->reload(smaller));
    auto asked = [&] {
        std::lock_guard lock(flaky->askedMutex);
        return flaky->slicesAsked.size();
    };
    auto inBackground = [&] { return asked() - static_cast<std::size_t>(flaky->slicesOnCaller); };
    // A hold is about 0.021 USD: the third request takes a 0.05 slice below its
    // low mark, and the refiller tops it up while the upstream answers.
    for (int i = 0; i < 12; ++i) {
        Script slow = anthropicWhole(10);
        slow.onRead = [](std::size_t) { usleep(30'000); };
        rig->upstream->scripts.push_back(std::move(slow));
        REQUIRE(rig->post(false, 20).status == 200);
    }
    CHECK(inBackground() > 0);
    CHECK(Rig::waitFor([&] { return rig->admin->usage("u", 100)->size() == 12; }));
    {
        std::lock_guard lock(flaky->askedMutex);
        for (const SliceRequest& r : flaky->slicesAsked) {
            CHECK(r.freePermille == 250);
            CHECK(r.want <= *Money::parse("0.05"));
        }
    }
    // The slice: at most 0.05 free after a refill, plus what the estimate in
    // flight then did not use (about 0.011). Under the start's policy: ~2 USD.
    CHECK(rig->admin->balance("u")->heldCreditsNew <= *Money::parse("0.071"));

    Config off = rig->config;
    off.settings.sliceMax = Money{};
    REQUIRE(rig->service->reload(off));
    const std::size_t before = asked();
    const int holdsBefore = flaky->reservedOnCaller;
    for (int i = 0; i < 4; ++i) { // each holds its own estimate in the ledger now
        rig->upstream->scripts.push_back(anthropicWhole(10));
        REQUIRE(rig->post(false, 20).status == 200);
    }
    CHECK(flaky->reservedOnCaller == holdsBefore + 4);
    rig->service->stop();
    CHECK(asked() == before);
    CHECK(rig->admin->balance("u")->heldCreditsNew == Money{});
}

TEST_CASE("slices: the refiller tops a slice up before the next request would find it short") {
    std::atomic<bool> down{false};
    FlakyLedger* flaky = nullptr;
    // A 0.05 slice and holds of about 0.021 USD that cost 0.01: after two
    // requests the slice has 0.02 free, less than the next hold but more than
    // a quarter of its size. The refiller fills it between requests; only the
    // first refill is the request's own.
    auto rig =
        flakyRig(R"("settlement": "journal_first", "slice_max_usd": 0.05)", "10", down, flaky);
    rig->service->start();
    for (int i = 0; i < 12; ++i) {
        rig->upstream->scripts.push_back(anthropicWhole(10));
        REQUIRE(rig->post(false, 20).status == 200);
        usleep(20'000); // a client's pause
    }
    CHECK(flaky->slicesOnCaller == 1);
    CHECK(flaky->reservedOnCaller == 0);
    std::lock_guard lock(flaky->askedMutex);
    CHECK(flaky->slicesAsked.size() > 1);
}

TEST_CASE("slices: an unused slice goes back after slice_idle_seconds") {
    std::atomic<bool> down{false};
    FlakyLedger* flaky = nullptr;
    auto rig = flakyRig(std::string(kSlices) + R"(, "slice_idle_seconds": 5)", "10", down, flaky);
    rig->service->start();
    rig->upstream->scripts.push_back(anthropicWhole(10));
    REQUIRE(rig->post(false, 20).status == 200);
    CHECK(Rig::waitFor([&] { return rig->admin->usage("u", 10)->size() == 1; }));
    CHECK(rig->admin->balance("u")->heldCreditsNew.nanos > 0);
    rig->clock->advance(6'000);
    CHECK(Rig::waitFor([&] { return rig->admin->balance("u")->heldCreditsNew == Money{}; }, 5));
    CHECK(rig->balance() == *Money::parse("9.98999")); // 10 in + 10 out
}

TEST_CASE("slices: a slice takes at most slice_fraction of the free balance and slice_max_usd") {
    std::atomic<bool> down{false};
    FlakyLedger* flaky = nullptr;
    auto rig = flakyRig(R"("slice_max_usd": 0.05, "slice_fraction": 0.25)", "0.1", down, flaky);
    rig->upstream->scripts.push_back(anthropicWhole(10));
    REQUIRE(rig->post(false, 20).status == 200); // synchronous settlement: the charge is in
    Balance b = *rig->admin->balance("u");
    // A quarter of the free 0.1 USD (below the 0.05 cap and four holds of
    // 0.021); the charge of 0.01001 drew on it.
    CHECK(b.heldCreditsNew == *Money::parse("0.01499"));
    CHECK(b.creditsNew == *Money::parse("0.075"));
}

TEST_CASE("slices: a balance too low for a slice of its size gives the slice what the request "
          "lacks, exactly") {
    std::atomic<bool> down{false};
    FlakyLedger* flaky = nullptr;
    // One request's hold (20 out × 1000/M + input) is about 0.021 USD; half
    // of the free 0.03 USD is below it, the whole is not.
    auto rig = flakyRig(kSlices, "0.03", down, flaky);
    rig->upstream->scripts.push_back(anthropicWhole(10));
    HttpResponse r = rig->post(false, 20);
    REQUIRE(r.status == 200);
    CHECK(flaky->slicesOnCaller == 2); // the slice's size refused, then the exact need
    CHECK(flaky->reservedOnCaller == 0);
    // The next one finds 0.021 − 0.01001 in the slice and 0.009 in the balance: refused.
    rig->upstream->scripts.push_back(anthropicWhole(10));
    CHECK(rig->post(false, 20).status == 402);
    rig->service->stop();
    CHECK(rig->balance() == *Money::parse("0.01999"));
    CHECK(rig->admin->balance("u")->heldCreditsNew == Money{});
}

TEST_CASE("slices: a hold larger than slice_max_usd is the request's own, in the ledger") {
    std::atomic<bool> down{false};
    FlakyLedger* flaky = nullptr;
    auto rig = flakyRig(R"("slice_max_usd": 0.01)", "10", down, flaky);
    rig->upstream->scripts.push_back(anthropicWhole(10));
    REQUIRE(rig->post(false, 20).status == 200);
    CHECK(flaky->slicesOnCaller == 0);
    CHECK(flaky->reservedOnCaller == 1);
    CHECK(rig->balance() == *Money::parse("9.98999"));
    CHECK(rig->admin->balance("u")->heldCreditsNew == Money{});
}

TEST_CASE("slices: while the ledger is down, requests the slice covers are served; their charges "
          "land once after") {
    std::atomic<bool> down{false};
    FlakyLedger* flaky = nullptr;
    auto rig = flakyRig(std::string(kSlices) + R"(, "ledger_failure_mode": "fail_closed")", "10",
                        down, flaky);
    rig->upstream->scripts.push_back(anthropicWhole(10));
    REQUIRE(rig->post(false, 20).status == 200); // a slice of four holds is taken
    down = true;
    flaky->reservesFail = true;
    // Its free part (0.084 − 0.01001 drawn) covers five more holds of 0.021.
    for (int i = 0; i < 5; ++i) {
        rig->upstream->scripts.push_back(anthropicWhole(10));
        CHECK(rig->post(false, 20).status == 200);
    }
    CHECK(flaky->slicesOnCaller == 1);
    // A request larger than the slice has left is refused (fail_closed), not served free.
    rig->upstream->scripts.push_back(anthropicWhole(10));
    CHECK(rig->post(false, 1'000'000).status == 503);
    down = false;
    flaky->reservesFail = false;
    auto charged = [&] {
        auto logs = rig->admin->usage("u", 100);
        return std::count_if(logs->begin(), logs->end(),
                             [](const LogEntry& e) { return e.cost.nanos > 0; });
    };
    CHECK(Rig::waitFor([&] { return charged() == 6; }));
    rig->service->stop();
    CHECK(rig->admin->balance("u")->heldCreditsNew == Money{});
    CHECK(rig->balance() == *Money::parse("9.93994")); // 6 × 0.01001
}

TEST_CASE("a hold whose reserve timed out but was applied goes back once the ledger answers") {
    std::atomic<bool> down{false};
    FlakyLedger* flaky = nullptr;
    auto rig = flakyRig(R"("hold_ttl_seconds": 900)", "10", down, flaky);
    rig->service->start();
    flaky->reserveLate = true;
    rig->upstream->scripts.push_back(anthropicWhole(10));
    CHECK(rig->post(false, 20).status == 503); // fail_closed: nothing served
    CHECK(rig->admin->balance("u")->heldCreditsNew.nanos > 0);
    flaky->reserveLate = false;
    CHECK(Rig::waitFor([&] { return rig->admin->balance("u")->heldCreditsNew == Money{}; }));
    CHECK(rig->balance() == *Money::parse("10"));
}
