// ChargeJournal and its line format: escaping, torn lines, duplicates, replay against a
// locked ledger, kill -9 while replaying (the SQLite ledger; MongoDB's is in tests/mongo).
#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <set>
#include <sqlite3.h>
#include <sys/file.h>
#include <thread>
#include <unistd.h>

#include <doctest/doctest.h>

#include "ledger_test_util.hpp"
#include "trollproxy/journal.hpp"
#include "trollproxy/ledger.hpp"
#include "trollproxy/ledger_admin.hpp"
#include "worker_process.hpp"

using namespace trollproxy;
using trollproxy::test::linesWith;
using trollproxy::test::spawnWorker;
using trollproxy::test::TempDir;
using trollproxy::test::waitFor;

namespace {

Charge sampleCharge(const std::string& id) {
    Charge c;
    c.requestId = id;
    c.userId = "u";
    c.keyId = "sk-trollllm-k";
    c.model = "m";
    c.pool = Pool::CreditsNew;
    c.usage = Usage{10, 2, 3, 5, false};
    c.cost = Money{1000};
    c.statusCode = 200;
    c.latencyMs = 7;
    c.createdAtMs = 1'700'000'000'000;
    return c;
}

std::string readFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

std::unique_ptr<test::BothRoles> openWithUser(const std::string& path,
                                              std::int64_t timeoutMs = 3000) {
    auto l = test::BothRoles::open("sqlite:" + path, LedgerOptions{timeoutMs, ""});
    REQUIRE_MESSAGE(l, l.error().message);
    auto ledger = std::move(l).value();
    if (ledger->balance("u").ok())
        return ledger;
    REQUIRE(ledger->addUser("u"));
    REQUIRE(ledger->credit("u", BalanceField::CreditsNew, Money{1'000'000'000}));
    return ledger;
}

// A fresh SQLite ledger in its own directory, in both roles.
struct Fixture {
    TempDir dir;
    std::string uri = "sqlite:" + dir.file("ledger.db");
    std::unique_ptr<test::BothRoles> ledger = std::move(*test::BothRoles::open(uri));
};

} // namespace

TEST_CASE("encodeCharge escapes every string and decodeCharge reads it back") {
    Charge c = sampleCharge("id \"quoted\" \\ back\nslash\t\x01\x1f end");
    c.userId = "us\u00e9r \xe2\x9c\x93";
    c.keyId = "";
    c.model = "{\"not\":\"json\"}";
    c.pool = Pool::Credits;
    c.usage = Usage{1, 2, 3, 4, true};
    c.cost = Money{-5}; // never produced, but must survive the round trip
    c.statusCode = 599;
    c.success = false;
    std::string line = encodeCharge(c);
    CHECK(line.find('\n') == std::string::npos);
    auto d = decodeCharge(line);
    REQUIRE_MESSAGE(d, d.error().message);
    CHECK(d->requestId == c.requestId);
    CHECK(d->userId == c.userId);
    CHECK(d->keyId == c.keyId);
    CHECK(d->model == c.model);
    CHECK(d->pool == Pool::Credits);
    CHECK(d->usage == c.usage);
    CHECK(d->cost == c.cost);
    CHECK(d->statusCode == 599);
    CHECK(d->latencyMs == 7);
    CHECK_FALSE(d->success);
    CHECK(d->createdAtMs == c.createdAtMs);
}

TEST_CASE("decodeCharge refuses what it cannot trust") {
    std::string good = encodeCharge(sampleCharge("x"));
    CHECK(decodeCharge(good));
    CHECK_FALSE(decodeCharge(""));
    CHECK_FALSE(decodeCharge("not json"));
    CHECK_FALSE(decodeCharge(good.substr(0, good.size() - 1)));
    CHECK_FALSE(decodeCharge("{\"requestId\":\"\"}"));
    CHECK_FALSE(decodeCharge("{\"requestId\":\"x\"}"));
    std::string noCost = good;
    noCost.replace(noCost.find("costNanos"), 9, "costNanoz");
    CHECK_FALSE(decodeCharge(noCost));
    std::string textCost = good;
    textCost.replace(textCost.find("\"costNanos\":1000"), 16, "\"costNanos\":\"1000\"");
    CHECK_FALSE(decodeCharge(textCost));
}

TEST_CASE("replay with no journal file does nothing") {
    TempDir dir;
    auto ledger = openWithUser(dir.file("l.db"));
    ChargeJournal j(dir.file("missing.journal"));
    CHECK(j.pendingCount() == 0);
    auto r = j.replay(*ledger);
    REQUIRE(r);
    CHECK(r->applied + r->alreadySettled + r->pending + r->corrupt == 0);
    CHECK(::access(dir.file("missing.journal").c_str(), F_OK) != 0);
}

TEST_CASE("append where the directory does not exist is an error") {
    ChargeJournal j("/nonexistent-dir-for-trollproxy/x.journal");
    auto r = j.append(sampleCharge("a"));
    REQUIRE_FALSE(r);
    CHECK(r.error().code == ErrorCode::Unavailable);
    CHECK(j.pendingCount() == 0);
}

TEST_CASE("a charge appended after a torn line is kept; a restarted journal counts what waits") {
    TempDir dir;
    std::string path = dir.file("c.journal");
    {
        ChargeJournal j(path);
        REQUIRE(j.append(sampleCharge("before")));
    }
    std::ofstream(path, std::ios::app) << "{\"requestId\":\"torn\",\"us"; // crash mid-write
    ChargeJournal j(path);
    CHECK(j.pendingCount() == 2); // the torn line is counted until a replay drops it
    REQUIRE(j.append(sampleCharge("after")));
    auto ledger = openWithUser(dir.file("l.db"));
    auto r = j.replay(*ledger);
    REQUIRE(r);
    CHECK(r->applied == 2);
    CHECK(r->corrupt == 1);
    CHECK(r->pending == 0);
    CHECK(j.pendingCount() == 0);
    auto log = ledger->usage("u", 10);
    REQUIRE(log);
    REQUIRE(log->size() == 2);
    CHECK(ledger->balance("u")->creditsNew == Money{1'000'000'000 - 2000});
}

TEST_CASE(
    "replay against a locked ledger keeps everything pending, quickly, then applies it once") {
    TempDir dir;
    std::string db = dir.file("l.db");
    auto ledger = openWithUser(db, 200);
    std::string path = dir.file("c.journal");
    ChargeJournal j(path);
    for (int i = 0; i < 20; ++i)
        REQUIRE(j.append(sampleCharge("r" + std::to_string(i))));
    std::string before = readFile(path);

    sqlite3* lock = nullptr;
    REQUIRE(sqlite3_open(db.c_str(), &lock) == SQLITE_OK);
    REQUIRE(sqlite3_exec(lock, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr) == SQLITE_OK);
    auto start = std::chrono::steady_clock::now();
    auto r = j.replay(*ledger);
    auto took = std::chrono::steady_clock::now() - start;
    REQUIRE(r);
    CHECK(r->pending == 20);
    CHECK(r->applied == 0);
    CHECK(j.pendingCount() == 20);
    CHECK(readFile(path) == before);
    // One timeout, not twenty.
    CHECK(took < std::chrono::milliseconds(1500));
    sqlite3_exec(lock, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(lock);

    r = j.replay(*ledger);
    REQUIRE(r);
    CHECK(r->applied == 20);
    CHECK(r->pending == 0);
    CHECK(::access(path.c_str(), F_OK) != 0);
    r = j.replay(*ledger);
    REQUIRE(r);
    CHECK(r->applied == 0);
    CHECK(ledger->usage("u", 100)->size() == 20);
    CHECK(ledger->balance("u")->creditsNew == Money{1'000'000'000 - 20 * 1000});
}

TEST_CASE("journal: replay is exactly once, duplicates and torn lines are harmless") {
    Fixture f;
    REQUIRE(f.ledger->addUser("u"));
    REQUIRE(f.ledger->credit("u", BalanceField::Credits, Money{1'000'000'000}));
    std::string jpath = f.dir.file("j");
    ChargeJournal journal(jpath);
    Charge c;
    c.userId = "u";
    c.keyId = "k";
    c.model = "m\"odd\\name";
    c.pool = Pool::Credits;
    c.usage = Usage{1, 2, 3, 4, true};
    c.cost = Money{123};
    c.statusCode = 200;
    c.createdAtMs = 42;
    for (const char* id : {"a", "b", "a"}) {
        c.requestId = id;
        REQUIRE(journal.append(c));
    }
    std::ofstream(jpath, std::ios::app) << "{\"requestId\":\"torn\",\"userId\":"; // crash mid-write
    auto decoded = decodeCharge(encodeCharge(c));
    REQUIRE(decoded);
    CHECK(decoded->model == c.model);
    CHECK(decoded->usage == c.usage);
    CHECK(decoded->cost == c.cost);
    CHECK(decoded->pool == Pool::Credits);
    auto rep = journal.replay(*f.ledger);
    REQUIRE(rep);
    CHECK(rep->applied == 2);
    CHECK(rep->alreadySettled == 1);
    CHECK(rep->corrupt == 1);
    CHECK(f.ledger->balance("u")->credits == Money{1'000'000'000 - 246});
    rep = journal.replay(*f.ledger);
    CHECK(rep->applied == 0);
    CHECK(f.ledger->usage("u", 10)->front().usage.estimated);
}

TEST_CASE("journal: no replay by hand while the process that owns the journal runs") {
    Fixture f;
    REQUIRE(f.ledger->addUser("u"));
    REQUIRE(f.ledger->credit("u", BalanceField::CreditsNew, Money{1'000'000'000}));
    std::string jpath = f.dir.file("j");
    ChargeJournal journal(jpath);
    REQUIRE(journal.append(sampleCharge("req_live")));
    // What a running proxy holds on its journal (ProxyService takes the same lock).
    int owner = ::open((jpath + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    REQUIRE(owner >= 0);
    REQUIRE(::flock(owner, LOCK_EX | LOCK_NB) == 0);
    auto refused = journal.replay(*f.ledger);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == ErrorCode::Conflict);
    CHECK(refused.error().message.find("stop it to replay") != std::string::npos);
    CHECK(f.ledger->balance("u")->creditsNew == Money{1'000'000'000});
    std::string kept((std::istreambuf_iterator<char>(std::ifstream(jpath).rdbuf())), {});
    CHECK(kept.find("\"req_live\"") != std::string::npos); // the journal untouched
    ::close(owner);                                        // the process is gone
    auto rep = journal.replay(*f.ledger);
    REQUIRE(rep);
    CHECK(rep->applied == 1);
    CHECK(f.ledger->balance("u")->creditsNew == Money{1'000'000'000 - 1000});
}

TEST_CASE("kill -9 while replaying the journal: after a restart each charge counts once") {
    Fixture f;
    REQUIRE(f.ledger->addUser("j"));
    REQUIRE(f.ledger->credit("j", BalanceField::CreditsNew, Money{100'000'000'000}));
    std::string jpath = f.dir.file("charges.journal");
    pid_t p = spawnWorker({"journal", f.uri, "j", "3000", "j", jpath}, f.dir.file("j.out"));
    // Let it journal everything and start replaying, then kill it.
    while (linesWith(f.dir.file("j.out"), "journalled").size() < 3000)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    ::kill(p, SIGKILL);
    waitFor(p);
    pid_t r = spawnWorker({"replay", f.uri, jpath}, f.dir.file("r.out"));
    CHECK(WEXITSTATUS(waitFor(r)) == 0);
    auto logs = *f.ledger->usage("j", 1'000'000);
    CHECK(logs.size() == 3000);
    std::set<std::string> ids;
    for (const auto& e : logs)
        ids.insert(e.requestId);
    CHECK(ids.size() == 3000);
    CHECK(f.ledger->balance("j")->creditsNew == Money{100'000'000'000 - 3000LL * 10'000'000});
}
