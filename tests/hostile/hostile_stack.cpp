// The hostile tests' stack (proxy log kept in a file) and the checks each case ends with.
#include "hostile_stack.hpp"

#include <chrono>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <doctest/doctest.h>
#include <simdjson.h>

#include "../support/users.hpp"

namespace hostile {

namespace {

std::string lower(std::string s) {
    for (auto& c : s)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

std::string str(simdjson::dom::element e, const char* key) {
    std::string_view v;
    return e[key].get_string().get(v) ? std::string() : std::string(v);
}

std::int64_t num(simdjson::dom::element e, const char* key) {
    std::int64_t v = 0;
    return e[key].get_int64().get(v) ? 0 : v;
}

Money money(const std::string& usd) {
    auto m = Money::parse(usd);
    return m ? *m : Money{-1};
}

} // namespace

std::string Seen::header(const std::string& name) const {
    for (const auto& [k, v] : headers)
        if (k == name)
            return v;
    return {};
}

bool Seen::has(const std::string& name) const {
    for (const auto& [k, v] : headers)
        if (k == name)
            return true;
    return false;
}

std::string defaultConfig() {
    return R"({
  "port": 8000,
  "endpoints": [
    {"name": "oai", "base_url": "UPSTREAM/v1/chat/completions"},
    {"name": "ant", "base_url": "UPSTREAM/v1/messages"}
  ],
  "models": [
    {"id": "m", "billing_upstream": "openhands", "input_price_per_mtok": 1, "output_price_per_mtok": 2,
     "cache_write_price_per_mtok": 1.25, "cache_hit_price_per_mtok": 0.1},
    {"id": "cheap-model", "billing_upstream": "openhands", "input_price_per_mtok": 0.01, "output_price_per_mtok": 0.01},
    {"id": "gpt-5.1", "billing_upstream": "openhands", "input_price_per_mtok": 10, "output_price_per_mtok": 40},
    {"id": "aliased", "billing_upstream": "openhands", "upstream_model_id": "aliased-upstream",
     "input_price_per_mtok": 1, "output_price_per_mtok": 2}
  ],
  "user_agent": "trollproxy-hostile-test/1.0",
  "trollproxy": {"forward_headers": ["x-fake-*"], "default_max_output_tokens": 1000,
                 "rate_limit_per_minute": 1000000, "first_byte_timeout_ms": 5000, "idle_timeout_ms": 5000}
})";
}

Stack::Stack(std::string config, const std::string& upstreamKeys) {
    if (config.empty())
        config = defaultConfig();
    dir = harness::tempDir();
    ledgerUri = "sqlite:" + dir + "/ledger.db";
    logPath = dir + "/proxy.log";
    upstream = std::make_unique<harness::Process>(support::fakeUpstreamArgv());
    harness::writeFile(dir + "/config.json", support::withUpstream(config, upstream->port()));
    ledger = support::openAdmin(ledgerUri);
    proxy = std::make_unique<harness::Process>(
        support::proxyArgv(dir + "/config.json", ledgerUri, dir + "/charges.journal"),
        std::map<std::string, std::string>{{"TROLLPROXY_UPSTREAM_KEYS", upstreamKeys}},
        harness::Process::Options{.stderrPath = logPath});
}

std::string Stack::user(const std::string& name, const std::string& usd) {
    return support::addUserWithKey(*ledger, name,
                                   {{trollproxy::BalanceField::CreditsNew, support::usd(usd)}});
}

Money Stack::total(const std::string& name) {
    auto b = ledger->balance(name);
    if (!b)
        throw std::runtime_error(b.error().message);
    return b->credits + b->refCredits + b->creditsNew;
}

std::vector<LogLine> Stack::log() {
    std::vector<LogLine> out;
    std::istringstream in(support::readFile(logPath));
    simdjson::dom::parser parser;
    for (std::string line; std::getline(in, line);) {
        simdjson::dom::element e;
        if (line.empty() || line[0] != '{' || parser.parse(line).get(e) ||
            str(e, "request_id").empty())
            continue;
        LogLine l;
        l.raw = line;
        l.requestId = str(e, "request_id");
        l.user = str(e, "user");
        l.note = str(e, "note");
        l.status = static_cast<int>(num(e, "status"));
        l.cost = money(str(e, "cost").empty() ? "0" : str(e, "cost"));
        l.shortfall = money(str(e, "shortfall").empty() ? "0" : str(e, "shortfall"));
        bool est = false;
        l.hasUsage = !e["estimated"].get_bool().get(est);
        l.estimated = est;
        l.input = num(e, "input");
        l.output = num(e, "output");
        l.cacheWrite = num(e, "cache_write");
        l.cacheRead = num(e, "cache_read");
        out.push_back(std::move(l));
    }
    return out;
}

LogLine Stack::logFor(const std::string& requestId) {
    for (int i = 0; i < 50 && !requestId.empty(); ++i) {
        for (auto& l : log())
            if (l.requestId == requestId)
                return l;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return {};
}

std::vector<Seen> Stack::upstreamRequests() {
    harness::RawResponse r = harness::get(upstream->port(), "/_requests");
    std::vector<Seen> out;
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (parser.parse(r.body).get(doc))
        return out;
    for (simdjson::dom::element e : doc.get_array()) {
        Seen s;
        s.path = str(e, "path");
        s.body = str(e, "body");
        simdjson::dom::object headers;
        if (!e["headers"].get_object().get(headers)) {
            for (auto [k, v] : headers) {
                std::string_view sv;
                s.headers.emplace_back(lower(std::string(k)),
                                       v.get_string().get(sv) ? "" : std::string(sv));
            }
        }
        out.push_back(std::move(s));
    }
    return out;
}

harness::RawResponse call(Stack& s, const std::string& path, const std::string& body,
                          const std::string& key, std::map<std::string, std::string> more) {
    more["Authorization"] = "Bearer " + key;
    return harness::post(s.port(), path, body, more);
}

std::string chatBody(bool stream, const std::string& extra) {
    return std::string(R"({"model":"m","messages":[{"role":"user","content":"Hello there"}])") +
           (stream ? R"(,"stream":true)" : "") + extra + "}";
}

std::string messagesBody(bool stream, const std::string& extra, int maxTokens) {
    return R"({"model":"m","max_tokens":)" + std::to_string(maxTokens) +
           R"(,"messages":[{"role":"user","content":"Hello there"}])" +
           (stream ? R"(,"stream":true)" : "") + extra + "}";
}

Money priceM(std::int64_t in, std::int64_t out, std::int64_t cw, std::int64_t cr) {
    // Per token in nano-USD: 1 USD/Mtok = 1000.
    return Money{in * 1000 + out * 2000 + cw * 1250 + cr * 100};
}

std::int64_t ceilDiv(std::int64_t a, std::int64_t b) {
    return (a + b - 1) / b;
}

std::int64_t streamTextChars(int chunks) {
    std::int64_t n = 0;
    for (int i = 0; i < chunks; ++i)
        n += i == 0 ? 5 : 5 + static_cast<std::int64_t>(std::to_string(i).size());
    return n;
}

Money probeHold(Stack& s, const std::string& path, const std::string& body) {
    static int probes = 0;
    std::string name = "probe" + std::to_string(++probes);
    std::string key = s.user(name, "0");
    harness::RawResponse r = call(s, path, body, key);
    std::string msg = errorMessage(r.body);
    auto at = msg.find("needs up to ");
    if (r.status != 402 || at == std::string::npos)
        return Money{-1};
    std::string amount = msg.substr(at + 12);
    amount = amount.substr(0, amount.find(' '));
    return money(amount);
}

bool isJson(const std::string& body) {
    simdjson::dom::parser parser;
    simdjson::dom::element e;
    return !parser.parse(body).get(e);
}

std::string errorMessage(const std::string& body) {
    simdjson::dom::parser parser;
    simdjson::dom::element e;
    std::string_view m;
    if (parser.parse(body).get(e) || e["error"]["message"].get_string().get(m))
        return {};
    return std::string(m);
}

bool containsNoCase(const std::string& hay, const std::string& needle) {
    return lower(hay).find(lower(needle)) != std::string::npos;
}

Books::Books(Stack& s, std::string user) : s_(s), user_(std::move(user)) {
    before_ = s_.total(user_);
}

Money Books::spent() {
    return before_ - s_.total(user_);
}

void Books::check() {
    CHECK(s_.proxy->running());
    CHECK(harness::get(s_.port(), "/health").status == 200);
    // Streams log after their last byte: give the last one a moment.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    Money logged{0};
    for (const auto& l : s_.log()) {
        if (l.user != user_)
            continue;
        logged += l.cost;
        if (l.status >= 200 && l.status < 300 && l.hasUsage) {
            CAPTURE(l.raw);
            CHECK(l.cost.nanos > 0); // served: never free
        }
        if (l.status >= 400) {
            CAPTURE(l.raw);
            CHECK(l.cost.nanos == 0); // refused: never charged
        }
    }
    Money inLedger{0};
    auto entries = s_.ledger->usage(user_, 100000);
    REQUIRE(entries);
    for (const auto& e : *entries)
        inLedger += e.cost;
    Money decrease = spent();
    CHECK(logged.toString() == decrease.toString());
    CHECK(inLedger.toString() == decrease.toString());
    auto b = s_.ledger->balance(user_);
    REQUIRE(b);
    CHECK(b->credits.nanos >= 0);
    CHECK(b->refCredits.nanos >= 0);
    CHECK(b->creditsNew.nanos >= 0);
    CHECK(b->creditsUsed.nanos >= 0);
    CHECK(b->creditsNewUsed.nanos >= 0);
}

} // namespace hostile
