// SQLite-only ledger tests: fields the interface cannot set, several processes on one
// file, kill -9 in the middle of settling, a locked file. The journal's are in journal_test.cpp.
#include <csignal>
#include <set>
#include <sqlite3.h>
#include <thread>
#include <unistd.h>

#include <doctest/doctest.h>

#include "ledger_test_util.hpp"
#include "trollproxy/journal.hpp"
#include "trollproxy/ledger.hpp"
#include "trollproxy/ledger_admin.hpp"
#include "worker_process.hpp"

using namespace trollproxy;
using test::linesWith;
using test::spawnWorker;
using test::waitFor;

namespace {

std::string tempDir() {
    char dir[] = "/tmp/trollproxy-sqlite-XXXXXX";
    return ::mkdtemp(dir);
}

void sql(const std::string& path, const std::string& statement) {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    CHECK(sqlite3_exec(db, statement.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
}

struct Fixture {
    std::string dir = tempDir();
    std::string path = dir + "/ledger.db";
    std::string uri = "sqlite:" + path;
    std::unique_ptr<test::BothRoles> ledger = std::move(*test::BothRoles::open(uri));
};

} // namespace

// One column of the first row `query` returns, as an integer.
static std::int64_t sqlInteger(const std::string& path, const std::string& query) {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, query.c_str(), -1, &st, nullptr) == SQLITE_OK);
    std::int64_t v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

TEST_CASE("a batch counts every charge on its key: tokens, requests, the last use") {
    Fixture f;
    REQUIRE(f.ledger->addUser("kate"));
    REQUIRE(f.ledger->credit("kate", BalanceField::CreditsNew, *Money::parse("5")));
    REQUIRE(f.ledger->addKey("kate"));      // the user's own key (usersNew.apiKey)
    auto apiKey = f.ledger->addKey("kate"); // one in user_keys, which counts its use
    REQUIRE(apiKey);
    AuthOutcome auth = f.ledger->authenticate(*apiKey);
    REQUIRE(auth.status == AuthStatus::Authorized);
    SliceRequest slice{"slice-kate", "kate", Pool::CreditsNew,         *Money::parse("1"),
                       Money{1},     1000,   test::nowMs() + 3'600'000};
    REQUIRE(f.ledger->reserveSlice(slice).status == ReserveStatus::Reserved);
    std::vector<Charge> batch;
    for (int i = 0; i < 5; ++i) {
        Charge c = test::charge("kate-" + std::to_string(i), "kate", Pool::CreditsNew, "0.01",
                                Usage{100, 10 * i, 0, 0, false});
        c.keyId = auth.account.keyId;
        c.createdAtMs = 1'000 + i;
        if (i != 2) { // one is a request's own hold
            c.holdId = "slice-kate";
            c.holdShare = c.cost;
        }
        batch.push_back(c);
    }
    REQUIRE(f.ledger->reserve(test::hold("kate-2", "kate", Pool::CreditsNew, "0.02")) ==
            ReserveStatus::Reserved);
    for (const SettleOutcome& o : f.ledger->settleBatch(batch))
        CHECK(o.status == SettleStatus::Settled);
    const std::string row = "FROM user_keys WHERE requestsCount > 0";
    CHECK(sqlInteger(f.path, "SELECT requestsCount " + row) == 5);
    CHECK(sqlInteger(f.path, "SELECT tokensUsed " + row) == 5 * 100 + 10 * (0 + 1 + 2 + 3 + 4));
    CHECK(sqlInteger(f.path, "SELECT lastUsedAt " + row) == 1'004);
    Balance b = *f.ledger->balance("kate");
    CHECK(b.creditsNewUsed == *Money::parse("0.05"));
    CHECK(b.creditsNew + b.heldCreditsNew == *Money::parse("4.95"));
}

TEST_CASE("sqlite URI options: synchronous=full opens the same file, unknown options are refused") {
    std::string dir = tempDir();
    std::string path = dir + "/ledger.db";
    {
        auto full = openLedgerAdmin("sqlite:" + path + "?synchronous=full");
        REQUIRE(full);
        REQUIRE((*full)->addUser("u"));
        REQUIRE((*full)->credit("u", BalanceField::Credits, Money{5}));
    }
    auto normal = openLedgerAdmin("sqlite:" + path + "?synchronous=normal");
    REQUIRE(normal);
    auto b = (*normal)->balance("u");
    REQUIRE(b);
    CHECK(b->credits.nanos == 5);
    auto bad = openLedger("sqlite:" + path + "?synchronous=off");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == ErrorCode::InvalidArgument);
    CHECK(bad.error().message.find("synchronous=off") != std::string::npos);
}

TEST_CASE("expiry, inactive users and migration") {
    Fixture f;
    REQUIRE(f.ledger->addUser("old"));
    std::string key = *f.ledger->addKey("old");
    std::string extra = *f.ledger->addKey("old");
    CHECK(f.ledger->authenticate(key).status == AuthStatus::Authorized);
    sql(f.path, "UPDATE usersNew SET migration = 0 WHERE id = 'old'");
    CHECK(f.ledger->authenticate(key).status == AuthStatus::MigrationRequired);
    sql(f.path, "UPDATE usersNew SET role = 'admin' WHERE id = 'old'");
    CHECK(f.ledger->authenticate(key).status == AuthStatus::Authorized);
    sql(f.path, "UPDATE user_keys SET expiresAt = 1000 WHERE name = 'old'"); // the extra key's row
    CHECK(f.ledger->authenticate(extra).status == AuthStatus::KeyExpired);
    sql(f.path, "UPDATE usersNew SET expiresAt = 1000 WHERE id = 'old'");
    CHECK(f.ledger->authenticate(key).status == AuthStatus::KeyExpired);
    sql(f.path, "UPDATE usersNew SET expiresAt = NULL, isActive = 0 WHERE id = 'old'");
    CHECK(f.ledger->authenticate(key).status == AuthStatus::KeyRevoked);
}

TEST_CASE("a database another process holds locked is unavailable, not a hang") {
    Fixture f;
    REQUIRE(f.ledger->addUser("u"));
    REQUIRE(f.ledger->credit("u", BalanceField::CreditsNew, Money{1'000'000'000}));
    auto quick = std::move(*openLedger(f.uri, LedgerOptions{200, ""}));
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(f.path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr) == SQLITE_OK);
    auto start = std::chrono::steady_clock::now();
    HoldRequest h{"r1", "u", Pool::CreditsNew, Money{1}, 0};
    CHECK(quick->reserve(h) == ReserveStatus::LedgerUnavailable);
    Charge c;
    c.requestId = "r1";
    c.userId = "u";
    c.cost = Money{5};
    CHECK(quick->settle(c).status == SettleStatus::LedgerUnavailable);
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(3));

    // The charge goes to the journal and waits there.
    std::string jpath = f.dir + "/charges.journal";
    ChargeJournal journal(jpath);
    REQUIRE(journal.append(c));
    auto rep = journal.replay(*quick);
    REQUIRE(rep);
    CHECK(rep->pending == 1);
    CHECK(journal.pendingCount() == 1);
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(db);
    rep = journal.replay(*quick);
    REQUIRE(rep);
    CHECK(rep->applied == 1);
    CHECK(rep->pending == 0);
    CHECK(::access(jpath.c_str(), F_OK) != 0); // emptied journal is removed
    CHECK(f.ledger->balance("u")->creditsNew == Money{999'999'995});
}

TEST_CASE("two processes on one file cannot overspend") {
    Fixture f;
    REQUIRE(f.ledger->addUser("shared"));
    REQUIRE(f.ledger->credit("shared", BalanceField::CreditsNew,
                             Money{500'000'000})); // covers 50 x 0.01
    pid_t a = spawnWorker({"settle", f.uri, "shared", "100", "a"}, f.dir + "/a.out");
    pid_t b = spawnWorker({"settle", f.uri, "shared", "100", "b"}, f.dir + "/b.out");
    CHECK(WEXITSTATUS(waitFor(a)) == 0);
    CHECK(WEXITSTATUS(waitFor(b)) == 0);
    auto settled = linesWith(f.dir + "/a.out", "settled");
    auto more = linesWith(f.dir + "/b.out", "settled");
    settled.insert(settled.end(), more.begin(), more.end());
    CHECK(settled.size() == 50);
    auto bal = f.ledger->balance("shared");
    CHECK(bal->creditsNew.nanos == 0);
    CHECK(bal->creditsNewUsed == Money{500'000'000});
    CHECK(f.ledger->usage("shared", 1000)->size() == 50);
}

TEST_CASE("kill -9 while settling: every acknowledged charge is there exactly once") {
    Fixture f;
    REQUIRE(f.ledger->addUser("crash"));
    REQUIRE(f.ledger->credit("crash", BalanceField::CreditsNew, Money{100'000'000'000}));
    pid_t p = spawnWorker({"settle", f.uri, "crash", "100000", "c"}, f.dir + "/c.out");
    while (linesWith(f.dir + "/c.out", "settled").size() < 200)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ::kill(p, SIGKILL);
    waitFor(p);
    auto acked = linesWith(f.dir + "/c.out", "settled");
    auto logs = *f.ledger->usage("crash", 1'000'000);
    std::set<std::string> logged;
    Money sum;
    for (const auto& e : logs) {
        CHECK(logged.insert(e.requestId).second);
        sum += e.cost;
    }
    for (const auto& id : acked)
        CHECK(logged.count(id) == 1);
    CHECK(logged.size() >= acked.size());
    auto bal = f.ledger->balance("crash");
    // Money held for the charge in flight comes back with the sweep.
    REQUIRE(f.ledger->sweepExpiredHolds(INT64_MAX));
    bal = f.ledger->balance("crash");
    CHECK(Money{100'000'000'000} - bal->creditsNew == sum);
    CHECK(bal->creditsNewUsed == sum);
}
