// The SQLite ledger's secrets: its files are private (0600), client keys are stored
// only as SHA-256 digests, and a database with plain keys is converted at open.
#include <doctest/doctest.h>

#include <fstream>
#include <iterator>
#include <sqlite3.h>
#include <sys/stat.h>

#include "core/sha256.hpp"
#include "ledger_test_util.hpp"
#include "trollproxy/ledger.hpp"
#include "trollproxy/ledger_admin.hpp"

using namespace trollproxy;
using trollproxy::internal::sha256Hex;
using trollproxy::test::TempDir;

namespace {

const char* const kSuffixes[] = {"", "-wal", "-shm", "-journal"};

// Permission bits, or -1 when the file does not exist.
int modeOf(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? static_cast<int>(st.st_mode & 0777) : -1;
}

// The files of the database at `path` (itself, -wal, -shm, -journal) holding `needle`.
std::vector<std::string> filesContaining(const std::string& path, const std::string& needle) {
    std::vector<std::string> out;
    for (const char* suffix : kSuffixes) {
        std::ifstream in(path + suffix, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (bytes.find(needle) != std::string::npos)
            out.push_back(path + suffix);
    }
    return out;
}

void sql(const std::string& path, const std::string& statement) {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    char* err = nullptr;
    int rc = sqlite3_exec(db, statement.c_str(), nullptr, nullptr, &err);
    INFO(statement, ": ", err ? err : "");
    CHECK(rc == SQLITE_OK);
    sqlite3_free(err);
    sqlite3_close(db);
}

// Every row's first column, as text, through the sqlite3 C API.
std::vector<std::string> column(const std::string& path, const std::string& query) {
    sqlite3* db = nullptr;
    std::vector<std::string> out;
    REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* s = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, query.c_str(), -1, &s, nullptr) == SQLITE_OK);
    while (sqlite3_step(s) == SQLITE_ROW) {
        const unsigned char* t = sqlite3_column_text(s, 0);
        out.emplace_back(t ? reinterpret_cast<const char*>(t) : "NULL");
    }
    sqlite3_finalize(s);
    sqlite3_close(db);
    return out;
}

std::unique_ptr<test::BothRoles> open(const std::string& path) {
    auto l = test::BothRoles::open("sqlite:" + path);
    REQUIRE_MESSAGE(l, l.error().message);
    return std::move(l).value();
}

// The key and its random part: neither may be stored.
void checkNowhere(const std::string& path, const std::string& key) {
    INFO("key ", key);
    CHECK(filesContaining(path, key).empty());
    CHECK(filesContaining(path, key.substr(key.size() - 40)).empty());
}

// The schema as trollproxy created it before keys were stored as digests.
const char* kPlainKeySchema = R"(
CREATE TABLE usersNew (
  id TEXT PRIMARY KEY, apiKey TEXT UNIQUE, isActive INTEGER NOT NULL DEFAULT 1,
  role TEXT NOT NULL DEFAULT 'user', migration INTEGER NOT NULL DEFAULT 1, expiresAt INTEGER,
  credits INTEGER NOT NULL DEFAULT 0 CHECK (credits >= 0),
  creditsUsed INTEGER NOT NULL DEFAULT 0,
  refCredits INTEGER NOT NULL DEFAULT 0 CHECK (refCredits >= 0),
  creditsNew INTEGER NOT NULL DEFAULT 0 CHECK (creditsNew >= 0),
  creditsNewUsed INTEGER NOT NULL DEFAULT 0, tokensUserNew INTEGER NOT NULL DEFAULT 0,
  totalInputTokens INTEGER NOT NULL DEFAULT 0, totalOutputTokens INTEGER NOT NULL DEFAULT 0,
  createdAt INTEGER NOT NULL);
CREATE TABLE user_keys (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, isActive INTEGER NOT NULL DEFAULT 1,
  tokensUsed INTEGER NOT NULL DEFAULT 0, requestsCount INTEGER NOT NULL DEFAULT 0,
  createdAt INTEGER NOT NULL, lastUsedAt INTEGER, expiresAt INTEGER);
CREATE TABLE holds (
  requestId TEXT PRIMARY KEY, userId TEXT NOT NULL, pool TEXT NOT NULL,
  fromCredits INTEGER NOT NULL, fromRefCredits INTEGER NOT NULL, fromCreditsNew INTEGER NOT NULL,
  expiresAtMs INTEGER NOT NULL);
CREATE INDEX holds_expiry ON holds (expiresAtMs);
CREATE TABLE request_logs (
  requestId TEXT PRIMARY KEY, userId TEXT, userKeyId TEXT, model TEXT,
  inputTokens INTEGER, outputTokens INTEGER, cacheWriteTokens INTEGER, cacheHitTokens INTEGER,
  creditsCost INTEGER, shortfall INTEGER, tokensUsed INTEGER, statusCode INTEGER,
  latencyMs INTEGER, isSuccess INTEGER, creditType TEXT, pool TEXT, estimated INTEGER,
  createdAt INTEGER);
CREATE INDEX request_logs_user ON request_logs (userId, createdAt);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
)";

} // namespace

TEST_CASE("a new ledger file, its -wal and -shm are created 0600 whatever the umask") {
    TempDir dir;
    std::string path = dir.file("new.db");
    mode_t before = ::umask(0);
    auto l = openLedgerAdmin("sqlite:" + path);
    ::umask(before);
    REQUIRE_MESSAGE(l, l.error().message);
    REQUIRE((*l)->addUser("u"));
    REQUIRE((*l)->credit("u", BalanceField::Credits, Money{1}));
    CHECK(modeOf(path) == 0600);
    CHECK(modeOf(path + "-wal") == 0600); // WAL mode: it exists while the ledger is open
    int shm = modeOf(path + "-shm");
    CHECK((shm == -1 || shm == 0600));
}

TEST_CASE("an existing ledger file, -wal and -shm open to others are narrowed to 0600") {
    TempDir dir;
    std::string path = dir.file("old.db");
    {
        auto l = open(path);
        REQUIRE(l->addUser("u"));
    }
    // Another connection keeps the -wal and -shm files in place.
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "PRAGMA journal_mode=WAL; SELECT count(*) FROM usersNew", nullptr,
                         nullptr, nullptr) == SQLITE_OK);
    REQUIRE(modeOf(path + "-wal") != -1);
    for (const char* suffix : {"", "-wal", "-shm"}) {
        if (modeOf(path + suffix) != -1)
            REQUIRE(::chmod((path + suffix).c_str(), 0664) == 0);
    }
    REQUIRE(modeOf(path) == 0664);
    {
        auto l = open(path);
        CHECK(l->balance("u"));
        for (const char* suffix : {"", "-wal", "-shm"}) {
            INFO((path + suffix));
            int mode = modeOf(path + suffix);
            CHECK((mode == -1 || mode == 0600));
        }
        CHECK(modeOf(path) == 0600);
    }
    sqlite3_close(db);
}

TEST_CASE("client keys are stored as SHA-256 digests: the plain key is nowhere in the files") {
    TempDir dir;
    std::string path = dir.file("keys.db");
    auto l = open(path);
    REQUIRE(l->addUser("alice"));
    REQUIRE(l->credit("alice", BalanceField::CreditsNew, Money{1'000'000'000}));
    auto own = l->addKey("alice");   // usersNew.apiKey
    auto extra = l->addKey("alice"); // user_keys
    REQUIRE(own);
    REQUIRE(extra);

    AuthOutcome a = l->authenticate(*own);
    REQUIRE(a.status == AuthStatus::Authorized);
    CHECK(a.account.userId == "alice");
    CHECK(a.account.keyId == sha256Hex(*own));
    AuthOutcome b = l->authenticate(*extra);
    REQUIRE(b.status == AuthStatus::Authorized);
    CHECK(b.account.keyId == sha256Hex(*extra));
    // What the file holds is not a key.
    CHECK(l->authenticate(sha256Hex(*own)).status == AuthStatus::KeyInvalid);
    CHECK(l->authenticate(sha256Hex(*extra)).status == AuthStatus::KeyInvalid);

    CHECK(column(path, "SELECT apiKey FROM usersNew WHERE id = 'alice'") ==
          std::vector{sha256Hex(*own)});
    CHECK(column(path, "SELECT id FROM user_keys") == std::vector{sha256Hex(*extra)});

    // A charge under the account's key id counts on that key; a plain key id (a
    // journal line written before the upgrade) is logged as its digest.
    Charge c;
    c.requestId = "r1";
    c.userId = "alice";
    c.keyId = b.account.keyId;
    c.model = "m";
    c.cost = Money{10};
    c.usage = Usage{1, 0, 0, 1, false};
    REQUIRE(l->settle(c).status == SettleStatus::Settled);
    c.requestId = "r2";
    c.keyId = *own;
    REQUIRE(l->settle(c).status == SettleStatus::Settled);
    CHECK(column(path, "SELECT requestsCount FROM user_keys") == std::vector<std::string>{"1"});
    CHECK(column(path, "SELECT userKeyId FROM request_logs ORDER BY requestId") ==
          std::vector{sha256Hex(*extra), sha256Hex(*own)});
    auto log = l->usage("alice", 10);
    REQUIRE(log);
    REQUIRE(log->size() == 2);

    checkNowhere(path, *own);
    checkNowhere(path, *extra);

    REQUIRE(l->revokeKey(*extra));
    CHECK(l->authenticate(*extra).status == AuthStatus::KeyRevoked);
    REQUIRE(l->revokeKey(*own));
    CHECK(l->authenticate(*own).status == AuthStatus::KeyRevoked);
    auto wrong = l->revokeKey(sha256Hex(*own)); // the digest does not name the key
    REQUIRE_FALSE(wrong);
    CHECK(wrong.error().code == ErrorCode::NotFound);
    checkNowhere(path, *own);
    checkNowhere(path, *extra);
    l.reset(); // the last connection checkpoints into the database file
    checkNowhere(path, *own);
    checkNowhere(path, *extra);
}

TEST_CASE("a database with plain keys from an older trollproxy is converted once, at open") {
    TempDir dir;
    std::string path = dir.file("plain.db");
    std::string own = newApiKey(), extra = newApiKey(), revoked = newApiKey(), bobs = newApiKey();
    sql(path, std::string("PRAGMA journal_mode=WAL;") + kPlainKeySchema +
                  "INSERT INTO usersNew (id, apiKey, creditsNew, createdAt) VALUES ('alice', '" +
                  own + "', 1000, 0), ('bob', '" + bobs +
                  "', 0, 0), ('carol', NULL, 0, 0), ('dave', '', 0, 0);"
                  "INSERT INTO user_keys (id, name, isActive, requestsCount, createdAt) VALUES ('" +
                  extra + "', 'alice', 1, 3, 0), ('" + revoked +
                  "', 'alice', 0, 0, 0);"
                  "INSERT INTO request_logs (requestId, userId, userKeyId, creditsCost, createdAt) "
                  "VALUES "
                  "('r1', 'alice', '" +
                  own + "', 5, 1), ('r2', 'alice', '" + extra +
                  "', 6, 2),"
                  "('r3', 'alice', NULL, 0, 3);"
                  "INSERT INTO counters (name, value) VALUES ('shortfall', 7);");
    REQUIRE(filesContaining(path, own).size() == 1);

    auto l = open(path);
    AuthOutcome a = l->authenticate(own);
    CHECK(a.status == AuthStatus::Authorized);
    CHECK(a.account.userId == "alice");
    CHECK(a.account.keyId == sha256Hex(own));
    AuthOutcome b = l->authenticate(extra);
    CHECK(b.status == AuthStatus::Authorized);
    CHECK(b.account.keyId == sha256Hex(extra));
    CHECK(l->authenticate(revoked).status == AuthStatus::KeyRevoked);
    CHECK(l->authenticate(bobs).account.userId == "bob");
    CHECK(l->authenticate("").status == AuthStatus::KeyInvalid);

    CHECK(column(path, "SELECT apiKey FROM usersNew ORDER BY id") ==
          std::vector<std::string>{sha256Hex(own), sha256Hex(bobs), "NULL", "NULL"});
    auto keys = column(path, "SELECT id FROM user_keys ORDER BY requestsCount");
    CHECK(keys == std::vector{sha256Hex(revoked), sha256Hex(extra)});
    CHECK(column(path, "SELECT userKeyId FROM request_logs ORDER BY requestId") ==
          std::vector<std::string>{sha256Hex(own), sha256Hex(extra), "NULL"});
    CHECK(column(path, "SELECT value FROM counters WHERE name = 'schemaVersion'") ==
          std::vector<std::string>{"2"});
    CHECK(l->totalShortfall()->nanos == 7);
    CHECK(l->balance("alice")->creditsNew.nanos == 1000);
    for (const std::string& k : {own, extra, revoked, bobs})
        checkNowhere(path, k);

    // Opening again changes nothing: digests are not hashed twice.
    l.reset();
    l = open(path);
    CHECK(l->authenticate(own).status == AuthStatus::Authorized);
    CHECK(column(path, "SELECT id FROM user_keys ORDER BY requestsCount") == keys);

    // An older binary still running on the file adds a plain key: the next open converts that one.
    std::string late = newApiKey();
    sql(path, "INSERT INTO user_keys (id, name, requestsCount, createdAt) VALUES ('" + late +
                  "', 'alice', 9, 0)");
    l.reset();
    l = open(path);
    CHECK(l->authenticate(late).status == AuthStatus::Authorized);
    CHECK(l->authenticate(own).status == AuthStatus::Authorized);
    CHECK(l->authenticate(extra).status == AuthStatus::Authorized);
    CHECK(column(path, "SELECT id FROM user_keys ORDER BY requestsCount") ==
          std::vector{sha256Hex(revoked), sha256Hex(extra), sha256Hex(late)});
}
