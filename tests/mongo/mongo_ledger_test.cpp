// MongoDB ledger specifics the interface cannot show: production documents left as
// they are, a down or hung server, kill -9 while settling or replaying, write concern.
// Run by run.sh against CongoDB and/or TROLLPROXY_TEST_MONGODB_URI.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <map>
#include <netinet/in.h>
#include <set>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <mongoc/mongoc.h>

#include "ledger_test_util.hpp"
#include "trollproxy/ledger.hpp"
#include "trollproxy/ledger_admin.hpp"
#include "worker_process.hpp"

using namespace trollproxy;
using test::linesWith;
using test::spawnWorker;
using test::waitFor;

namespace {

std::string ledgerUri() {
    const char* env = std::getenv("TROLLPROXY_TEST_LEDGER_URI");
    return env ? env : "";
}

// CongoDB stores only ObjectId `_id`s (see run.sh): name users "oid:<hex>" there.
bool objectIdsOnly() {
    const char* env = std::getenv("TROLLPROXY_TEST_OBJECTID_IDS");
    return env && *env == '1';
}

std::string hex(std::size_t n) {
    return newApiKey().substr(12, n);
}

std::string userName(const std::string& stem) {
    return objectIdsOnly() ? "oid:" + hex(24) : stem + "-" + hex(10);
}

std::int64_t nowMs() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

// The request path and administration of one ledger, behind one pointer.
std::unique_ptr<test::BothRoles> open(const std::string& uri, const LedgerOptions& o = {}) {
    auto l = test::BothRoles::open(uri, o);
    REQUIRE_MESSAGE(l, uri);
    return std::move(l).value();
}

// Direct driver access, to write and read documents as production has them.
struct Raw {
    mongoc_client_t* client = nullptr;
    mongoc_database_t* db = nullptr;
    explicit Raw(const std::string& ledger = ledgerUri()) {
        mongoc_init();
        mongoc_uri_t* uri = mongoc_uri_new(ledger.c_str());
        REQUIRE(uri);
        client = mongoc_client_new_from_uri(uri);
        db = mongoc_client_get_database(client, mongoc_uri_get_database(uri));
        mongoc_uri_destroy(uri);
    }
    ~Raw() {
        mongoc_database_destroy(db);
        mongoc_client_destroy(client);
    }
    void insert(const char* coll, const bson_t* doc) {
        mongoc_collection_t* c = mongoc_database_get_collection(db, coll);
        bson_error_t err;
        bool ok = mongoc_collection_insert_one(c, doc, nullptr, nullptr, &err);
        mongoc_collection_destroy(c);
        REQUIRE_MESSAGE(ok, err.message);
    }
    // The one document matching filter (caller destroys), or null.
    bson_t* findOne(const char* coll, const bson_t* filter) {
        mongoc_collection_t* c = mongoc_database_get_collection(db, coll);
        mongoc_cursor_t* cur = mongoc_collection_find_with_opts(c, filter, nullptr, nullptr);
        const bson_t* d = nullptr;
        bson_t* out = mongoc_cursor_next(cur, &d) ? bson_copy(d) : nullptr;
        mongoc_cursor_destroy(cur);
        mongoc_collection_destroy(c);
        return out;
    }
    std::size_t count(const char* coll, const bson_t* filter) {
        mongoc_collection_t* c = mongoc_database_get_collection(db, coll);
        mongoc_cursor_t* cur = mongoc_collection_find_with_opts(c, filter, nullptr, nullptr);
        const bson_t* d = nullptr;
        std::size_t n = 0;
        while (mongoc_cursor_next(cur, &d))
            ++n;
        mongoc_cursor_destroy(cur);
        mongoc_collection_destroy(c);
        return n;
    }
};

void appendId(bson_t* doc, const std::string& name) {
    if (name.rfind("oid:", 0) == 0) {
        bson_oid_t oid;
        bson_oid_init_from_string(&oid, name.c_str() + 4);
        BSON_APPEND_OID(doc, "_id", &oid);
    } else {
        BSON_APPEND_UTF8(doc, "_id", name.c_str());
    }
}

bson_type_t typeOf(const bson_t* doc, const char* path) {
    bson_iter_t it, found;
    if (!bson_iter_init(&it, doc) || !bson_iter_find_descendant(&it, path, &found))
        return BSON_TYPE_EOD;
    return bson_iter_type(&found);
}

std::string tempDir() {
    char dir[] = "/tmp/trollproxy-mongo-XXXXXX";
    return ::mkdtemp(dir);
}

// A listening socket on 127.0.0.1 that accepts connections and never answers.
struct SilentServer {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    int port = 0;
    std::atomic<bool> stop{false};
    std::vector<int> conns;
    std::thread th;
    SilentServer() {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        REQUIRE(::listen(fd, 64) == 0);
        socklen_t len = sizeof a;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
        port = ntohs(a.sin_port);
        th = std::thread([this] {
            while (!stop) {
                int c = ::accept(fd, nullptr, nullptr);
                if (c >= 0)
                    conns.push_back(c);
            }
        });
    }
    ~SilentServer() {
        stop = true;
        ::shutdown(fd, SHUT_RDWR);
        ::close(fd);
        th.join();
        for (int c : conns)
            ::close(c);
    }
};

// A port nothing listens on.
int closedPort() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

// Every operation answers "unavailable" within a bound of timeoutMs plus slack.
void checkUnavailableInTime(const std::string& uri) {
    LedgerOptions o;
    o.timeoutMs = 400;
    auto l = open(uri, o);
    const std::int64_t bound = 3000;
    auto timed = [&](const char* what, auto&& op) {
        auto t0 = std::chrono::steady_clock::now();
        op();
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - t0)
                      .count();
        INFO(what, " took ", ms, " ms");
        CHECK(ms < bound);
    };
    std::string user = userName("down");
    timed("authenticate",
          [&] { CHECK(l->authenticate(newApiKey()).status == AuthStatus::LedgerUnavailable); });
    timed("reserve", [&] {
        CHECK(l->reserve(HoldRequest{"r1", user, Pool::CreditsNew, Money{1}, nowMs() + 1000}) ==
              ReserveStatus::LedgerUnavailable);
    });
    Charge c;
    c.requestId = "r1";
    c.userId = user;
    c.cost = Money{1};
    timed("settle", [&] { CHECK(l->settle(c).status == SettleStatus::LedgerUnavailable); });
    timed("settleBatch", [&] {
        Charge d = c;
        d.requestId = "r2";
        d.holdId = "s1";
        d.holdShare = Money{1};
        for (const SettleOutcome& o : l->settleBatch(std::vector<Charge>{c, d}))
            CHECK(o.status == SettleStatus::LedgerUnavailable);
    });
    timed("reserveSlice", [&] {
        SliceRequest r{"s1", user, Pool::CreditsNew, Money{1}, Money{1}, 500, nowMs() + 1000};
        CHECK(l->reserveSlice(r).status == ReserveStatus::LedgerUnavailable);
    });
    timed("release", [&] { CHECK_FALSE(l->release("r1")); });
    timed("sweep", [&] { CHECK_FALSE(l->sweepExpiredHolds(nowMs())); });
    timed("balance", [&] { CHECK_FALSE(l->balance(user)); });
    timed("ping", [&] { CHECK_FALSE(l->ping()); });
}

} // namespace

TEST_CASE("production documents: fields trollproxy does not own are left as they are") {
    Raw raw;
    auto l = open(ledgerUri());
    std::string user = userName("prod");
    std::string key = newApiKey();
    bson_t* doc = bson_new();
    appendId(doc, user);
    BSON_APPEND_UTF8(doc, "apiKey", key.c_str());
    BSON_APPEND_UTF8(doc, "email", "someone@example.com");
    BSON_APPEND_BOOL(doc, "isActive", true);
    BSON_APPEND_UTF8(doc, "role", "user");
    BSON_APPEND_BOOL(doc, "migration", true);
    BSON_APPEND_INT32(doc, "credits", 5); // an integer, as a web backend may write it
    BSON_APPEND_DOUBLE(doc, "creditsNew", 2.5);
    BSON_APPEND_DOUBLE(doc, "creditsNewUsed", 0.25);
    BSON_APPEND_INT64(doc, "tokensUserNew", 7);
    BSON_APPEND_DATE_TIME(doc, "expiresAtNew", nowMs() + 86'400'000);
    BSON_APPEND_DATE_TIME(doc, "createdAt", nowMs() - 86'400'000);
    bson_t sub;
    BSON_APPEND_DOCUMENT_BEGIN(doc, "profile", &sub);
    BSON_APPEND_UTF8(&sub, "plan", "pro");
    bson_append_document_end(doc, &sub);
    raw.insert("usersNew", doc);

    AuthOutcome a = l->authenticate(key);
    REQUIRE(a.status == AuthStatus::Authorized);
    CHECK(a.account.userId == user);
    std::string id = "req-" + hex(12);
    REQUIRE(l->reserve(HoldRequest{id, user, Pool::CreditsNew, Money{1'000'000'000},
                                   nowMs() + 60'000}) == ReserveStatus::Reserved);
    Charge c;
    c.requestId = id;
    c.userId = user;
    c.keyId = key;
    c.model = "m";
    c.pool = Pool::CreditsNew;
    c.usage = Usage{10, 0, 0, 5};
    c.cost = Money{400'000'000};
    c.createdAtMs = nowMs();
    REQUIRE(l->settle(c).status == SettleStatus::Settled);

    bson_t* filter = bson_new();
    appendId(filter, user);
    bson_t* after = raw.findOne("usersNew", filter);
    REQUIRE(after);
    // Every field it does not own is byte for byte what it was.
    const std::set<std::string> changed{"creditsNew", "creditsNewUsed", "tokensUserNew",
                                        "totalInputTokens", "totalOutputTokens"};
    bson_iter_t it;
    REQUIRE(bson_iter_init(&it, doc));
    while (bson_iter_next(&it)) {
        std::string k = bson_iter_key(&it);
        if (changed.count(k))
            continue;
        INFO(k);
        bson_iter_t other;
        REQUIRE(bson_iter_init_find(&other, after, k.c_str()));
        CHECK(bson_iter_type(&other) == bson_iter_type(&it));
        bson_t a1 = BSON_INITIALIZER, a2 = BSON_INITIALIZER;
        bson_append_iter(&a1, "v", -1, &it);
        bson_append_iter(&a2, "v", -1, &other);
        CHECK(bson_equal(&a1, &a2));
        bson_destroy(&a1);
        bson_destroy(&a2);
    }
    // Money stays a double, counters numbers; nothing of the request is left behind.
    CHECK(typeOf(after, "creditsNew") == BSON_TYPE_DOUBLE);
    CHECK(typeOf(after, "creditsNewUsed") == BSON_TYPE_DOUBLE);
    CHECK(typeOf(after, ("trollproxyHolds." + id).c_str()) == BSON_TYPE_EOD);
    CHECK(typeOf(after, ("trollproxyPending." + id).c_str()) == BSON_TYPE_EOD);
    bson_iter_init_find(&it, after, "creditsNew");
    CHECK(std::abs(bson_iter_double(&it) - 2.1) < 1e-9);
    bson_iter_init_find(&it, after, "creditsNewUsed");
    CHECK(std::abs(bson_iter_double(&it) - 0.65) < 1e-9);
    bson_iter_init_find(&it, after, "tokensUserNew");
    CHECK(bson_iter_as_int64(&it) == 22);

    bson_t* logFilter = BCON_NEW("requestId", BCON_UTF8(id.c_str()));
    bson_t* log = raw.findOne("request_logs", logFilter);
    REQUIRE(log);
    CHECK(typeOf(log, "creditsCost") == BSON_TYPE_DOUBLE);
    CHECK(typeOf(log, "createdAt") == BSON_TYPE_DATE_TIME);
    CHECK(typeOf(log, "userId") == BSON_TYPE_UTF8);
    CHECK(typeOf(log, "creditType") == BSON_TYPE_UTF8);
    bson_iter_init_find(&it, log, "creditsCost");
    CHECK(std::abs(bson_iter_double(&it) - 0.4) < 1e-12);

    if (!objectIdsOnly()) {
        // A production `user_keys` entry: `_id` is the raw key, `name` the user.
        std::string second = newApiKey();
        bson_t* k = BCON_NEW("_id", BCON_UTF8(second.c_str()), "name", BCON_UTF8(user.c_str()),
                             "isActive", BCON_BOOL(true));
        raw.insert("user_keys", k);
        AuthOutcome b = l->authenticate(second);
        CHECK(b.status == AuthStatus::Authorized);
        CHECK(b.account.userId == user);
        bson_destroy(k);
    }
    bson_destroy(log);
    bson_destroy(logFilter);
    bson_destroy(after);
    bson_destroy(filter);
    bson_destroy(doc);
}

// The `_id` of request `id`'s log entry in the database behind `raw`.
bson_oid_t logIdOf(Raw& raw, const std::string& id) {
    bson_t* filter = BCON_NEW("requestId", BCON_UTF8(id.c_str()));
    bson_t* log = raw.findOne("request_logs", filter);
    bson_oid_t oid{};
    bson_iter_t it;
    REQUIRE(log);
    REQUIRE(bson_iter_init_find(&it, log, "_id"));
    REQUIRE(BSON_ITER_HOLDS_OID(&it));
    bson_oid_copy(bson_iter_oid(&it), &oid);
    bson_destroy(log);
    bson_destroy(filter);
    return oid;
}

TEST_CASE("a log entry's _id is its request id's; another request's entry under it is not "
          "taken for this one") {
    // Two databases on one server: in the second, the _id that request `taken`
    // gets is already another request's.
    const std::string uri2 = ledgerUri() + "_ids";
    auto l = open(ledgerUri());
    auto l2 = open(uri2);
    Raw raw, raw2(uri2);
    std::string user = userName("ids");
    for (auto* ledger : {l.get(), l2.get()}) {
        REQUIRE(ledger->addUser(user));
        REQUIRE(ledger->credit(user, BalanceField::CreditsNew, Money{1'000'000'000}));
    }
    // Request ids as trollproxy makes them: an instance, then ms and random digits.
    const std::int64_t ms = nowMs();
    char digits[32];
    std::snprintf(digits, sizeof digits, "%011llx", static_cast<unsigned long long>(ms));
    const std::string stem = "req_" + hex(8) + "_" + digits;
    const std::string same = stem + hex(13), taken = stem + hex(13);
    auto charge = [&](const std::string& id) {
        return test::charge(id, user, Pool::CreditsNew, "0.1");
    };
    REQUIRE(l->settle(charge(same)).status == SettleStatus::Settled);
    REQUIRE(l2->settle(charge(same)).status == SettleStatus::Settled);
    REQUIRE(l->settle(charge(taken)).status == SettleStatus::Settled);
    const bson_oid_t sameId = logIdOf(raw, same), sameId2 = logIdOf(raw2, same),
                     takenId = logIdOf(raw, taken);
    // The same request id, the same _id, whatever wrote it; time-ordered as ObjectIds are.
    CHECK(bson_oid_equal(&sameId, &sameId2));
    CHECK(bson_oid_get_time_t(&sameId) == static_cast<time_t>(ms / 1000));
    CHECK_FALSE(bson_oid_equal(&sameId, &takenId));

    bson_t* other = bson_new();
    BSON_APPEND_OID(other, "_id", &takenId);
    BSON_APPEND_UTF8(other, "requestId", "someone-else");
    BSON_APPEND_INT64(other, "creditsCostNanos", 7);
    raw2.insert("request_logs", other);

    SettleOutcome o = l2->settle(charge(taken));
    CHECK(o.status == SettleStatus::Settled);
    CHECK(o.charged.nanos == 100'000'000);
    CHECK(l2->settle(charge(taken)).status == SettleStatus::AlreadySettled);
    bson_t* byId = BCON_NEW("requestId", BCON_UTF8(taken.c_str()));
    CHECK(raw2.count("request_logs", byId) == 1);
    bson_t* byOid = bson_new();
    BSON_APPEND_OID(byOid, "_id", &takenId);
    bson_t* kept = raw2.findOne("request_logs", byOid);
    REQUIRE(kept);
    bson_iter_t it;
    REQUIRE(bson_iter_init_find(&it, kept, "requestId"));
    CHECK(std::string(bson_iter_utf8(&it, nullptr)) == "someone-else");
    // Both charges moved the money once each.
    CHECK(std::llabs(l2->balance(user)->creditsNew.nanos - 800'000'000) <= 3);
    bson_destroy(kept);
    bson_destroy(byOid);
    bson_destroy(byId);
    bson_destroy(other);
}

TEST_CASE("write concern majority") {
    LedgerOptions o;
    o.writeConcern = "majority";
    auto l = open(ledgerUri(), o);
    std::string user = userName("wc");
    REQUIRE(l->addUser(user));
    REQUIRE(l->credit(user, BalanceField::CreditsNew, Money{1'000'000'000}));
    std::string id = "wc-" + hex(12);
    REQUIRE(l->reserve(HoldRequest{id, user, Pool::CreditsNew, Money{500'000'000},
                                   nowMs() + 60'000}) == ReserveStatus::Reserved);
    Charge c;
    c.requestId = id;
    c.userId = user;
    c.cost = Money{100'000'000};
    c.createdAtMs = nowMs();
    REQUIRE(l->settle(c).status == SettleStatus::Settled);
    CHECK(std::llabs(l->balance(user)->creditsNew.nanos - 900'000'000) <= 3);
}

TEST_CASE("a down server: LedgerUnavailable within a bounded time") {
    checkUnavailableInTime("mongodb://127.0.0.1:" + std::to_string(closedPort()) + "/down");
}

TEST_CASE("a server that accepts and never answers: LedgerUnavailable within a bounded time") {
    SilentServer s;
    checkUnavailableInTime("mongodb://127.0.0.1:" + std::to_string(s.port) + "/hung");
}

TEST_CASE("kill -9 while settling: every acknowledged charge is there exactly once") {
    auto l = open(ledgerUri());
    std::string dir = tempDir();
    std::string user = userName("crash");
    REQUIRE(l->addUser(user));
    const Money start{100'000'000'000};
    REQUIRE(l->credit(user, BalanceField::CreditsNew, start));
    pid_t p =
        spawnWorker({"settle", ledgerUri(), user, "100000", "c" + hex(6) + "-"}, dir + "/c.out");
    auto t0 = std::chrono::steady_clock::now();
    while (linesWith(dir + "/c.out", "settled").size() < 150 &&
           std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30))
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ::kill(p, SIGKILL);
    waitFor(p);
    auto acked = linesWith(dir + "/c.out", "settled");
    REQUIRE(acked.size() >= 150);

    // The sweep gives back the hold in flight and finishes a settlement whose money
    // moved but whose log entry was not written yet.
    REQUIRE(l->sweepExpiredHolds(INT64_MAX));
    auto logs = l->usage(user, 1'000'000);
    REQUIRE(logs);
    std::set<std::string> logged;
    Money sum;
    for (const auto& e : *logs) {
        CHECK(logged.insert(e.requestId).second);
        sum += e.cost;
    }
    for (const auto& id : acked)
        CHECK(logged.count(id) == 1);
    CHECK(logged.size() >= acked.size());
    CHECK(logged.size() <= acked.size() + 1);
    auto bal = l->balance(user);
    REQUIRE(bal);
    std::int64_t n = static_cast<std::int64_t>(logged.size());
    INFO("decrease ", (start - bal->creditsNew).toString(), " logged ", sum.toString());
    CHECK(std::llabs((start - bal->creditsNew).nanos - sum.nanos) <=
          n); // within 1 nano-USD per charge
    CHECK(std::llabs(bal->creditsNewUsed.nanos - sum.nanos) <= n);
    std::filesystem::remove_all(dir);
}

TEST_CASE("kill -9 while replaying the journal: after a restart each charge counts once") {
    auto l = open(ledgerUri());
    std::string dir = tempDir();
    std::string user = userName("journal");
    REQUIRE(l->addUser(user));
    const Money start{100'000'000'000};
    REQUIRE(l->credit(user, BalanceField::CreditsNew, start));
    const int kCharges = 400;
    std::string jpath = dir + "/charges.journal";
    pid_t p = spawnWorker(
        {"journal", ledgerUri(), user, std::to_string(kCharges), "j" + hex(6) + "-", jpath},
        dir + "/j.out");
    while (linesWith(dir + "/j.out", "journalled").size() < static_cast<std::size_t>(kCharges))
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    // Let the replay get going, then kill it part way.
    auto t0 = std::chrono::steady_clock::now();
    while (l->usage(user, 1'000'000)->size() < 50 &&
           std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20))
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    ::kill(p, SIGKILL);
    waitFor(p);
    std::size_t before = l->usage(user, 1'000'000)->size();
    INFO("logged before the restart: ", before);
    pid_t r = spawnWorker({"replay", ledgerUri(), jpath}, dir + "/r.out");
    CHECK(WEXITSTATUS(waitFor(r)) == 0);
    REQUIRE(l->sweepExpiredHolds(INT64_MAX));
    auto logs = l->usage(user, 1'000'000);
    REQUIRE(logs);
    std::set<std::string> ids;
    Money sum;
    for (const auto& e : *logs) {
        ids.insert(e.requestId);
        sum += e.cost;
    }
    CHECK(logs->size() == static_cast<std::size_t>(kCharges));
    CHECK(ids.size() == static_cast<std::size_t>(kCharges));
    CHECK(sum.nanos == 10'000'000LL * kCharges);
    auto bal = l->balance(user);
    REQUIRE(bal);
    CHECK(std::llabs((start - bal->creditsNew).nanos - sum.nanos) <= kCharges);
    std::filesystem::remove_all(dir);
}

TEST_CASE("a crash between moving the money and writing its log entry: the retry or the sweep "
          "finishes it, once") {
    auto l = open(ledgerUri());
    std::string dir = tempDir();
    std::string user = userName("failpoint");
    REQUIRE(l->addUser(user));
    REQUIRE(l->credit(user, BalanceField::CreditsNew, Money{1'000'000'000}));
    // The worker's test hook exits 86 at this point of settle().
    const std::vector<std::string> crash = {"--crash-at", "mongo-crash-after-charge"};
    auto settleOne = [&](const std::string& prefix) {
        std::vector<std::string> args = crash;
        args.insert(args.end(), {"settle", ledgerUri(), user, "1", prefix});
        return args;
    };
    std::string a = "fpa" + hex(6) + "-", b = "fpb" + hex(6) + "-";
    // The worker reserves 0.01, settles 0.01 and dies right after the money moved.
    int st = waitFor(spawnWorker(settleOne(a), dir + "/a.out"));
    REQUIRE(WIFEXITED(st));
    REQUIRE(WEXITSTATUS(st) == 86);
    CHECK(std::llabs(l->balance(user)->creditsNew.nanos - 990'000'000) <= 2);
    CHECK(l->usage(user, 100)->empty());

    // The same charge again (a journal replay): the log entry appears, no money moves.
    Charge c;
    c.requestId = a + "0";
    c.userId = user;
    c.pool = Pool::CreditsNew;
    c.cost = Money{10'000'000};
    c.createdAtMs = nowMs();
    SettleOutcome again = l->settle(c);
    CHECK(again.status == SettleStatus::Settled);
    CHECK(again.charged.nanos == 10'000'000);
    CHECK(l->settle(c).status == SettleStatus::AlreadySettled);
    CHECK(std::llabs(l->balance(user)->creditsNew.nanos - 990'000'000) <= 2);
    CHECK(l->usage(user, 100)->size() == 1);

    // Nobody retries the second one: the sweep finishes it, once it is old enough.
    st = waitFor(spawnWorker(settleOne(b), dir + "/b.out"));
    REQUIRE(WEXITSTATUS(st) == 86);
    REQUIRE(l->sweepExpiredHolds(nowMs()));
    CHECK(l->usage(user, 100)->size() == 1); // younger than the grace period: may still be running
    REQUIRE(l->sweepExpiredHolds(INT64_MAX));
    REQUIRE(l->sweepExpiredHolds(INT64_MAX));
    auto logs = l->usage(user, 100);
    REQUIRE(logs->size() == 2);
    std::set<std::string> ids;
    for (const auto& e : *logs) {
        ids.insert(e.requestId);
        CHECK(e.cost.nanos == 10'000'000);
    }
    CHECK(ids == std::set<std::string>{a + "0", b + "0"});
    Balance bal = *l->balance(user);
    CHECK(std::llabs(bal.creditsNew.nanos - 980'000'000) <= 3);
    CHECK(std::llabs(bal.creditsNewUsed.nanos - 20'000'000) <= 2);
    c.requestId = b + "0";
    CHECK(l->settle(c).status == SettleStatus::AlreadySettled);
    std::filesystem::remove_all(dir);
}

// The ledger's test hook (src/ledger/test_hooks.hpp): exported by libtrollproxy, not
// public API.
namespace trollproxy::internal {
using LedgerHook = void (*)(std::string_view point);
void setLedgerTestHook(LedgerHook hook);
} // namespace trollproxy::internal

namespace {

// Stops an armed thread's settleBatch where a crash would hurt most: the users'
// compare-and-sets moved the money, no log entry is written yet. It waits there until let go.
std::atomic<bool> stopReached{false}, stopGo{false};
thread_local bool stopArmed = false;

void stopAfterCharge(std::string_view point) {
    if (!stopArmed || point != "mongo-crash-after-charge")
        return;
    stopReached = true;
    while (!stopGo)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

bool hasPendingMarker(Raw& raw, const std::string& user, const std::string& requestId) {
    bson_t filter = BSON_INITIALIZER;
    appendId(&filter, user);
    bson_t* doc = raw.findOne("usersNew", &filter);
    bson_destroy(&filter);
    REQUIRE(doc);
    bool has = typeOf(doc, ("trollproxyPending." + requestId).c_str()) == BSON_TYPE_DOCUMENT;
    bson_destroy(doc);
    return has;
}

} // namespace

TEST_CASE("settleBatch stopped after the money moved: a retry or the sweep writes each entry "
          "once") {
    using test::usd;
    internal::setLedgerTestHook(stopAfterCharge);
    stopReached = false;
    stopGo = false;
    auto l = open(ledgerUri());     // the stopped batch's process
    auto other = open(ledgerUri()); // another process, or this one restarted
    Raw raw;
    std::string a = userName("bstop-a"), b = userName("bstop-b");
    REQUIRE(other->addUser(a));
    REQUIRE(other->addUser(b));
    REQUIRE(other->credit(a, BalanceField::CreditsNew, usd("1.0")));
    REQUIRE(other->credit(b, BalanceField::Credits, usd("1.0")));
    std::string slice = "bs" + hex(8), req = "br" + hex(8);
    SliceGrant g = l->reserveSlice(SliceRequest{slice, a, Pool::CreditsNew, usd("0.5"), usd("0.1"),
                                                1000, nowMs() + 3'600'000});
    REQUIRE(g.status == ReserveStatus::Reserved);
    REQUIRE(l->reserve(test::hold(req + "-3", a, Pool::CreditsNew, "0.2")) ==
            ReserveStatus::Reserved);
    auto onSlice = [&](Charge c, const char* share) {
        c.holdId = slice;
        c.holdShare = usd(share);
        return c;
    };
    const std::vector<Charge> batch{
        onSlice(test::charge(req + "-1", a, Pool::CreditsNew, "0.1"), "0.1"),
        test::charge(req + "-2", b, Pool::Credits, "0.3"),
        test::charge(req + "-3", a, Pool::CreditsNew, "0.15"), // its own hold of 0.2
        onSlice(test::charge(req + "-4", a, Pool::CreditsNew, "0.2"), "0.05"),
    };
    const char* charged[] = {"0.1", "0.3", "0.15", "0.2"};

    std::vector<SettleOutcome> stopped;
    std::thread t([&] {
        stopArmed = true;
        stopped = l->settleBatch(batch);
    });
    auto t0 = std::chrono::steady_clock::now();
    while (!stopReached && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20))
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    REQUIRE(stopReached);

    // The money moved, once per charge, each with its pending marker; no entry yet.
    auto check = [&] {
        Balance ba = *other->balance(a), bb = *other->balance(b);
        CHECK_MONEY(ba.creditsNew, usd("0.2"), 8);
        CHECK_MONEY(ba.heldCreditsNew, usd("0.35"), 2);
        CHECK_MONEY(ba.creditsNewUsed, usd("0.45"), 2);
        CHECK_MONEY(bb.credits, usd("0.7"), 2);
        CHECK_MONEY(bb.creditsUsed, usd("0.3"), 2);
    };
    check();
    CHECK(test::logOf(*other, a).empty());
    CHECK(test::logOf(*other, b).empty());
    CHECK(hasPendingMarker(raw, a, req + "-1"));
    CHECK(hasPendingMarker(raw, b, req + "-2"));

    SUBCASE("a retry (the journal replayed) writes the entries, moves no money") {
        auto again = other->settleBatch(batch);
        REQUIRE(again.size() == batch.size());
        for (std::size_t i = 0; i < again.size(); ++i) {
            INFO("charge ", i);
            CHECK(again[i].status == SettleStatus::Settled);
            CHECK_MONEY(again[i].charged, usd(charged[i]), 1);
        }
    }
    SUBCASE("the sweep writes the entries once the markers are past the grace time") {
        REQUIRE(other->sweepExpiredHolds(nowMs()));
        CHECK(test::logOf(*other, a).empty()); // young markers: the batch may still run
        REQUIRE(other->sweepExpiredHolds(nowMs() + 60'000)); // the slice expires later
    }
    check();
    CHECK(test::logOf(*other, a).size() == 3);
    CHECK(test::logOf(*other, b).size() == 1);
    CHECK_FALSE(hasPendingMarker(raw, a, req + "-1"));
    CHECK_FALSE(hasPendingMarker(raw, a, req + "-4"));
    CHECK_FALSE(hasPendingMarker(raw, b, req + "-2"));

    // Let go, the stopped batch finds its entries written by someone else.
    stopGo = true;
    t.join();
    internal::setLedgerTestHook(nullptr);
    REQUIRE(stopped.size() == batch.size());
    for (const SettleOutcome& o : stopped)
        CHECK(o.status == SettleStatus::AlreadySettled);
    for (const SettleOutcome& o : other->settleBatch(batch))
        CHECK(o.status == SettleStatus::AlreadySettled);
    check();
    std::map<std::string, Money> costs;
    for (const std::string& user : {a, b})
        for (const LogEntry& e : test::logOf(*other, user))
            costs[e.requestId] = e.cost;
    REQUIRE(costs.size() == 4);
    for (std::size_t i = 0; i < batch.size(); ++i)
        CHECK_MONEY(costs[batch[i].requestId], usd(charged[i]), 1);
    REQUIRE(l->release(slice));
    Balance ba = *other->balance(a);
    CHECK_MONEY(ba.creditsNew + ba.creditsNewUsed, usd("1.0"), 10);
    CHECK(ba.heldCreditsNew.nanos == 0);
}
