// Shared drill machinery: the stack, traffic shapes, the client, /proc readings and the SQLite lock
// helper.
#include "drill.hpp"

#include <chrono>
#include <cstdio>
#include <dirent.h>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include <sqlite3.h>
#include <unistd.h>

#include "../support/users.hpp"

using namespace trollproxy;

namespace drills {

namespace {

const char* kConfig = R"({
  "port": 8000,
  "endpoints": [
    {"name": "oai", "base_url": "UPSTREAM/v1/chat/completions"},
    {"name": "ant", "base_url": "UPSTREAM/v1/messages"}
  ],
  "models": [
    {"id": "m", "type": "openhands", "upstream": "openhands", "billing_upstream": "openhands", PRICES}
  ],
  "trollproxy": {SETTINGS}
})";

const char* kPrices =
    R"("billing_multiplier": 1.1, "input_price_per_mtok": 3, "output_price_per_mtok": 15,
     "cache_write_price_per_mtok": 3.75, "cache_hit_price_per_mtok": 0.3)";

void replaceAll(std::string& s, const std::string& from, const std::string& to) {
    for (std::size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size())
        s.replace(p, from.size(), to);
}

std::int64_t jsonInt(const std::string& body, const std::string& key) {
    auto p = body.find("\"" + key + "\":");
    return p == std::string::npos ? 0 : std::atoll(body.c_str() + p + key.size() + 3);
}

std::int64_t ceilDiv(std::int64_t a, std::int64_t b) {
    return (a + b - 1) / b;
}

std::string chunkText(int i) {
    return i == 0 ? "Hello" : " word" + std::to_string(i);
}

std::string procStatus(pid_t pid, const std::string& field) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(field + ":", 0) == 0)
            return line.substr(field.size() + 1);
    }
    return "";
}

} // namespace

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

std::string money(Money m) {
    return m.toString() + " USD";
}

Verdict::Verdict(std::string name) : name_(std::move(name)) {
    std::printf("\n=== drill: %s\n", name_.c_str());
    std::fflush(stdout);
}

bool Verdict::check(bool ok, const std::string& what) {
    std::printf("  %s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    std::fflush(stdout);
    failures_ += ok ? 0 : 1;
    return ok;
}

void Verdict::note(const std::string& text) {
    std::printf("  ..   %s\n", text.c_str());
    std::fflush(stdout);
}

int Verdict::finish() {
    std::printf("=== %s: %s\n", name_.c_str(), failures_ == 0 ? "PASS" : "FAIL");
    std::fflush(stdout);
    return failures_ == 0 ? 0 : 1;
}

DrillStack::DrillStack(const std::string& settings, std::string uri,
                       std::vector<std::string> upstreamArgs, std::string modelPrices) {
    dir = harness::tempDir();
    ledgerUri = uri.empty() ? "sqlite:" + dir + "/ledger.db" : uri;
    upstream = std::make_unique<harness::Process>(
        support::fakeUpstreamArgv(upstreamArgs), std::map<std::string, std::string>{},
        harness::Process::Options{.stderrPath = dir + "/upstream.log"});
    config = kConfig;
    replaceAll(config, "PRICES", modelPrices.empty() ? kPrices : modelPrices);
    // The test upstream is steered by x-fake-* request headers.
    replaceAll(config, "SETTINGS",
               std::string("\"forward_headers\": [\"x-fake-*\"]") + (settings.empty() ? "" : ", ") +
                   settings);
    replaceAll(config, "UPSTREAM", "http://127.0.0.1:" + std::to_string(upstream->port()));
    harness::writeFile(dir + "/config.json", config);
    auto cfg = parseConfig(config, "drill");
    if (!cfg)
        throw std::runtime_error(cfg.error().message);
    prices = cfg->findModel("m")->prices;
    this->settings = cfg->settings;
    ledger = support::openAdmin(ledgerUri);
    startProxy();
}

DrillStack::~DrillStack() {
    peers.clear();
    proxy.reset();
    upstream.reset();
}

void DrillStack::startProxy(int instance) {
    if (instance > 0 && static_cast<std::size_t>(instance) > peers.size()) {
        peers.resize(static_cast<std::size_t>(instance));
        peerMetricsPorts.resize(static_cast<std::size_t>(instance));
    }
    auto& slot = instance == 0 ? proxy : peers.at(static_cast<std::size_t>(instance - 1));
    slot.reset();
    const std::string log =
        dir + (instance == 0 ? "/proxy.log" : "/proxy-" + std::to_string(instance) + ".log");
    slot = std::make_unique<harness::Process>(
        support::proxyArgv(dir + "/config.json", ledgerUri, journalPath(instance)),
        std::map<std::string, std::string>{
            {"TROLLPROXY_UPSTREAM_KEYS", "upstream-key-1,upstream-key-2"}},
        harness::Process::Options{.stderrPath = log});
    int metrics = slot->portOnLine("metrics listening on ");
    if (instance == 0)
        metricsPort = metrics;
    else
        peerMetricsPorts.at(static_cast<std::size_t>(instance - 1)) = metrics;
}

harness::Process& DrillStack::proxyAt(int instance) {
    return instance == 0 ? *proxy : *peers.at(static_cast<std::size_t>(instance - 1));
}

int DrillStack::port(int instance) const {
    return instance == 0 ? proxy->port() : peers.at(static_cast<std::size_t>(instance - 1))->port();
}

std::string DrillStack::journalPath(int instance) const {
    return dir + (instance == 0 ? "/charges.journal"
                                : "/charges-" + std::to_string(instance) + ".journal");
}

FakeStats DrillStack::stats() {
    auto r = harness::get(upstream->port(), "/_stats");
    return FakeStats{jsonInt(r.body, "requests"),    jsonInt(r.body, "completed"),
                     jsonInt(r.body, "input"),       jsonInt(r.body, "output"),
                     jsonInt(r.body, "cache_write"), jsonInt(r.body, "cache_read")};
}

void DrillStack::resetStats() {
    harness::post(upstream->port(), "/_reset", "{}", {});
}

// CongoDB (the MongoDB-protocol test server) cannot store string _ids: on a
// MongoDB ledger a drill's user is an ObjectId-shaped name, one per drill name.
std::string DrillStack::ledgerName(const std::string& name) const {
    if (ledgerUri.rfind("mongodb", 0) != 0)
        return name;
    char hex[25];
    std::snprintf(
        hex, sizeof hex, "%024llx",
        static_cast<unsigned long long>(std::hash<std::string>{}(name)&0xffffffffffffULL));
    return std::string("oid:") + hex;
}

std::string DrillStack::userWithKey(const std::string& plainName, Money creditsNew) {
    return support::addUserWithKey(*ledger, ledgerName(plainName),
                                   {{BalanceField::CreditsNew, creditsNew}});
}

Balance DrillStack::balance(const std::string& plainName) {
    const std::string name = ledgerName(plainName);
    for (int i = 0;; ++i) {
        auto b = ledger->balance(name);
        if (b)
            return *b;
        if (i > 50)
            throw std::runtime_error(b.error().message);
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
}

std::map<std::string, LogEntry> DrillStack::logs(const std::string& plainName, int* duplicates) {
    auto all = ledger->usage(ledgerName(plainName), 10'000'000);
    if (!all)
        throw std::runtime_error(all.error().message);
    std::map<std::string, LogEntry> out;
    int dup = 0;
    for (auto& e : *all) {
        if (!out.emplace(e.requestId, e).second)
            ++dup;
    }
    if (duplicates)
        *duplicates = dup;
    return out;
}

double DrillStack::metric(const std::string& series, int instance) {
    auto r = harness::get(
        instance == 0 ? metricsPort : peerMetricsPorts.at(static_cast<std::size_t>(instance - 1)),
        "/metrics");
    std::istringstream in(r.body);
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(series + " ", 0) == 0)
            return std::atof(line.c_str() + series.size() + 1);
    }
    return 0;
}

const char* faultName(Fault f) {
    switch (f) {
    case Fault::None:
        return "ok";
    case Fault::Status429:
        return "429";
    case Fault::Status500:
        return "500";
    case Fault::SlowOk:
        return "slow-first-byte-ok";
    case Fault::SlowTimeout:
        return "slow-first-byte-timeout";
    case Fault::Cut3:
        return "cut-after-3-chunks";
    case Fault::Cut0:
        return "cut-before-content";
    case Fault::Stall:
        return "stall-mid-stream";
    case Fault::HangUp:
        return "client-hangs-up";
    }
    return "?";
}

Shot makeShot(const std::string& key, bool anthropic, bool stream, Fault fault, Usage usage,
              int maxTokens, std::size_t padTo) {
    Shot s;
    s.fault = fault;
    s.anthropic = anthropic;
    s.stream = stream || fault == Fault::Cut3 || fault == Fault::Cut0 || fault == Fault::Stall ||
               fault == Fault::HangUp;
    s.path = anthropic ? "/v1/messages" : "/v1/chat/completions";
    std::string head = R"({"model":"m","max_tokens":)" + std::to_string(maxTokens) +
                       R"(,"messages":[{"role":"user","content":"Tell me about drills)";
    std::string tail = std::string("\"}]") + (s.stream ? R"(,"stream":true})" : "}");
    // By default the body is as large as the input it reports (2 bytes a token,
    // as the hold estimates), so the usage is one the request could have had.
    if (padTo == 0)
        padTo = static_cast<std::size_t>(2 * usage.totalInput());
    std::string pad;
    if (padTo > head.size() + tail.size())
        pad.assign(padTo - head.size() - tail.size(), '.');
    s.body = head + pad + tail;
    if (!anthropic)
        usage.cacheWrite = 0; // OpenAI's usage has no cache writes
    s.usage = usage;
    s.headers["Authorization"] = "Bearer " + key;
    s.headers["x-fake-usage"] =
        std::to_string(usage.uncachedInput) + "," + std::to_string(usage.output) + "," +
        std::to_string(usage.cacheWrite) + "," + std::to_string(usage.cacheRead);
    s.headers["x-fake-chunks"] = "8";
    switch (fault) {
    case Fault::None:
        break;
    case Fault::Status429:
        s.headers["x-fake-status"] = "429";
        s.headers["x-fake-retry-after"] = "1";
        break;
    case Fault::Status500:
        s.headers["x-fake-status"] = "500";
        break;
    case Fault::SlowOk:
        s.headers["x-fake-latency-ms"] = "400";
        break;
    case Fault::SlowTimeout:
        s.headers["x-fake-latency-ms"] = "2500";
        break;
    case Fault::Cut3:
        s.headers["x-fake-cut-after"] = "3";
        break;
    case Fault::Cut0:
        s.headers["x-fake-cut-after"] = "0";
        break;
    case Fault::Stall:
        s.headers["x-fake-chunk-delay-ms"] = "2500";
        break;
    case Fault::HangUp:
        s.headers["x-fake-chunk-delay-ms"] = "100";
        break;
    }
    return s;
}

Outcome fire(int port, const Shot& shot, double timeoutSeconds) {
    Outcome o;
    o.shot = shot;
    double t0 = now();
    o.started = t0;
    try {
        if (shot.fault == Fault::HangUp) {
            std::string raw = harness::postAndHangUp(port, shot.path, shot.body, shot.headers, 300);
            o.status = raw.size() > 12 ? std::atoi(raw.c_str() + 9) : 0;
            auto p = raw.find("x-request-id: ");
            if (p != std::string::npos)
                o.requestId = raw.substr(p + 14, raw.find("\r\n", p) - p - 14);
        } else {
            auto r = harness::post(port, shot.path, shot.body, shot.headers, timeoutSeconds);
            o.status = r.status;
            o.requestId = r.headers["x-request-id"];
            o.body = r.body;
            if (shot.stream) {
                std::string raw = r.chunks.empty() ? "" : r.chunks.back().second;
                bool ended = raw.size() >= 5 && raw.compare(raw.size() - 5, 5, "0\r\n\r\n") == 0;
                o.complete =
                    r.status == 200 && ended &&
                    r.body.find(shot.anthropic ? "message_stop" : "[DONE]") != std::string::npos;
            } else {
                o.complete = r.status == 200 && r.body.find("\"usage\"") != std::string::npos;
            }
        }
    } catch (const std::exception&) {
        o.status = 0;
    }
    o.seconds = now() - t0;
    return o;
}

Usage cutUsage(const Shot& shot, int chunks) {
    std::int64_t chars = 0;
    for (int i = 0; i < chunks; ++i)
        chars += static_cast<std::int64_t>(chunkText(i).size());
    Usage u;
    if (shot.anthropic) {
        u = shot.usage; // message_start carries the input counts
        u.output = std::max<std::int64_t>(1, ceilDiv(chars, 4));
    } else {
        u.uncachedInput = ceilDiv(static_cast<std::int64_t>(shot.body.size()), 4);
        u.output = ceilDiv(chars, 4);
    }
    u.estimated = true;
    return u;
}

void Tally::add(Outcome o) {
    if (o.status == 200)
        o.body.clear(); // no check reads it; a soak keeps many
    std::lock_guard lock(mutex);
    outcomes.push_back(std::move(o));
}

std::map<int, int> Tally::byStatus() {
    std::lock_guard lock(mutex);
    std::map<int, int> m;
    for (const auto& o : outcomes)
        ++m[o.status];
    return m;
}

void runLoad(int clients, int perClient, std::atomic<bool>& stop,
             const std::function<Shot(int, int)>& next, const std::function<int()>& port,
             Tally& tally) {
    runLoad(
        clients, perClient, stop, next, [&](int) { return port(); }, tally);
}

void runLoad(int clients, int perClient, std::atomic<bool>& stop,
             const std::function<Shot(int, int)>& next, const std::function<int(int)>& portOf,
             Tally& tally) {
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
        threads.emplace_back([&, c] {
            for (int n = 0; !stop && (perClient <= 0 || n < perClient); ++n)
                tally.add(fire(portOf(c), next(c, n)));
        });
    }
    for (auto& t : threads)
        t.join();
}

void warmUp(DrillStack& s, const std::string& key, Tally& tally) {
    std::atomic<bool> never{false};
    runLoad(
        48, 3, never,
        [&](int c, int n) {
            Shot sh = makeShot(key, (c + n) % 2 == 0, c % 2 == 0, Fault::None,
                               Usage{100, 0, 0, 10, false});
            sh.headers["x-fake-latency-ms"] = "200";
            return sh;
        },
        [&] { return s.port(); }, tally);
    std::this_thread::sleep_for(std::chrono::seconds(2));
}

std::int64_t rssKb(pid_t pid) {
    return std::atoll(procStatus(pid, "VmRSS").c_str());
}

int threadCount(pid_t pid) {
    return std::atoi(procStatus(pid, "Threads").c_str());
}

int openFds(pid_t pid) {
    int n = 0;
    if (DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str())) {
        while (dirent* e = ::readdir(d))
            n += e->d_name[0] != '.';
        ::closedir(d);
    }
    return n;
}

FdCensus fdCensus(pid_t pid) {
    FdCensus c;
    std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* e = ::readdir(d)) {
            char target[512];
            ssize_t n = ::readlink((dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
            if (e->d_name[0] == '.' || n <= 0)
                continue;
            std::string t(target, static_cast<std::size_t>(n));
            if (t.rfind("socket:", 0) == 0)
                ++c.sockets;
            else if (t.find("/ledger.db") != std::string::npos)
                ++c.ledger;
            else
                ++c.other;
        }
        ::closedir(d);
    }
    return c;
}

void checkFds(Verdict& v, const FdCensus& b, const FdCensus& n, int workers) {
    std::printf(
        "  descriptors: ledger files %d -> %d, sockets %d -> %d, other %d -> %d (%d workers)\n",
        b.ledger, n.ledger, b.sockets, n.sockets, b.other, n.other, workers);
    v.check(n.other <= b.other + 1,
            "descriptors other than ledger files and sockets back to baseline");
    v.check(n.ledger <= 2 * (workers + 1) + 1, "ledger connections bounded by the workers");
    v.check(n.sockets <= 3 * workers + 4, "sockets bounded by the workers (no leaked connection)");
}

void describeFds(pid_t pid) {
    std::map<std::string, int> kinds;
    std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* e = ::readdir(d)) {
            char target[512];
            ssize_t n = ::readlink((dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
            if (e->d_name[0] == '.' || n <= 0)
                continue;
            std::string t(target, static_cast<std::size_t>(n));
            ++kinds[t.rfind("socket:", 0) == 0 ? "socket" : t.substr(t.rfind('/') + 1)];
        }
        ::closedir(d);
    }
    for (const auto& [k, n] : kinds)
        std::printf("    %5d %s\n", n, k.c_str());
    std::string cmd = "ss -tanp 2>/dev/null | grep 'pid=" + std::to_string(pid) +
                      ",' | awk '{split($5, a, \":\"); print \"    \" $1 \" peer port \" a[2]}' | "
                      "sort | uniq -c | "
                      "sort -rn | head -8";
    std::fflush(stdout);
    if (std::system(cmd.c_str()) != 0)
        std::printf("    (ss is not available)\n");
}

std::unique_ptr<harness::Process> lockSqlite(const Options& o, const std::string& dbPath,
                                             double seconds) {
    return std::make_unique<harness::Process>(
        std::vector<std::string>{o.self, "lock-sqlite", dbPath, std::to_string(seconds)});
}

int lockSqliteMain(const std::string& path, double seconds) {
    sqlite3* db = nullptr;
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK)
        return 1;
    sqlite3_busy_timeout(db, 30'000);
    // Like an operator's long write transaction: the write lock is held, reads go on (WAL).
    if (sqlite3_exec(db,
                     "BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS drill_lock (x); INSERT INTO "
                     "drill_lock VALUES (1)",
                     nullptr, nullptr, nullptr) != SQLITE_OK) {
        std::fprintf(stderr, "lock-sqlite: %s\n", sqlite3_errmsg(db));
        return 1;
    }
    // The harness waits for this line.
    std::printf("lock held; listening on 127.0.0.1:0\n");
    std::fflush(stdout);
    std::this_thread::sleep_for(
        std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000)));
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(db);
    return 0;
}

} // namespace drills
