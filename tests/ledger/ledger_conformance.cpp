// One behaviour test for every ledger backend, both roles; the URI comes from
// TROLLPROXY_TEST_LEDGER_URI.
//
// Only the public interface is used (no raw SQL, no driver calls), and every case
// makes its own users and request ids, because a MongoDB database is shared by
// all cases of a run. The helpers are in ledger_test_util.hpp.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "ledger_test_util.hpp"
#include "trollproxy/ledger.hpp"
#include "trollproxy/ledger_admin.hpp"

using namespace trollproxy;
using namespace trollproxy::test;

namespace {

bool isHexDigest(const std::string& s) {
    return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

} // namespace

TEST_CASE("authenticate: valid, unknown, second key, revoked") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "auth");
    auto key = l->addKey(user);
    REQUIRE(key);
    CHECK(key->rfind("sk-trollllm-", 0) == 0);
    CHECK(key->size() == 12 + 64);

    AuthOutcome a = l->authenticate(*key);
    CHECK(a.status == AuthStatus::Authorized);
    CHECK(a.account.userId == user);
    if (isMongo()) {
        CHECK(a.account.keyId == *key); // production's documents hold the key itself
    } else {
        // The embedded ledger keeps only the key's SHA-256: that is the key id.
        CHECK(isHexDigest(a.account.keyId));
        CHECK(a.account.keyId.find(key->substr(12)) == std::string::npos);
        CHECK(l->authenticate(*key).account.keyId == a.account.keyId);
    }
    CHECK_FALSE(a.account.admin);

    CHECK(l->authenticate("sk-trollllm-" + std::string(64, '0')).status == AuthStatus::KeyInvalid);
    CHECK(l->authenticate("").status == AuthStatus::KeyInvalid);

    if (objectIdsOnly()) {
        MESSAGE("second key (user_keys, string _id) skipped: the server stores ObjectId _ids only");
    } else {
        auto second = l->addKey(user);
        REQUIRE(second);
        CHECK(*second != *key);
        AuthOutcome b = l->authenticate(*second);
        CHECK(b.status == AuthStatus::Authorized);
        CHECK(b.account.userId == user);
        CHECK(b.account.keyId != a.account.keyId);

        REQUIRE(l->revokeKey(*second));
        CHECK(l->authenticate(*second).status == AuthStatus::KeyRevoked);
        CHECK(l->authenticate(*key).status == AuthStatus::Authorized);
    }
    REQUIRE(l->revokeKey(*key));
    CHECK(l->authenticate(*key).status == AuthStatus::KeyRevoked);

    auto unknown = l->revokeKey("sk-trollllm-" + std::string(64, 'f'));
    REQUIRE_FALSE(unknown);
    CHECK(unknown.error().code == ErrorCode::NotFound);
    CHECK(l->ping());
}

TEST_CASE("reserve takes the hold from the right fields or refuses") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "reserve");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    give(*l, user, BalanceField::Credits, "0.3");
    give(*l, user, BalanceField::RefCredits, "0.5");
    std::string id = uniqueName("req");

    CHECK(l->reserve(hold(id + "-1", user, Pool::CreditsNew, "0.6")) == ReserveStatus::Reserved);
    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNew, usd("0.4"), 2);
    CHECK_MONEY(b.credits, usd("0.3"), 1);
    CHECK(l->reserve(hold(id + "-2", user, Pool::CreditsNew, "0.5")) ==
          ReserveStatus::InsufficientCredits);
    CHECK_MONEY(balanceOf(*l, user).creditsNew, usd("0.4"), 2);

    // Credits pool: `credits` first, the rest from `refCredits`.
    CHECK(l->reserve(hold(id + "-3", user, Pool::Credits, "0.7")) == ReserveStatus::Reserved);
    b = balanceOf(*l, user);
    CHECK_MONEY(b.credits, usd("0"), 2);
    CHECK_MONEY(b.refCredits, usd("0.1"), 2);
    CHECK_MONEY(b.creditsNew, usd("0.4"), 2);
    CHECK(l->reserve(hold(id + "-4", user, Pool::Credits, "0.2")) ==
          ReserveStatus::InsufficientCredits);
    CHECK(l->reserve(hold(id + "-5", userName("nobody"), Pool::Credits, "0.1")) ==
          ReserveStatus::InsufficientCredits);
    b = balanceOf(*l, user);
    CHECK(b.credits.nanos >= 0);
    CHECK_MONEY(b.refCredits, usd("0.1"), 2);

    REQUIRE(l->release(id + "-1"));
    REQUIRE(l->release(id + "-3"));
    b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNew, usd("1.0"), 3);
    CHECK_MONEY(b.credits, usd("0.3"), 3);
    CHECK_MONEY(b.refCredits, usd("0.5"), 3);
}

TEST_CASE("settle, credits pool: hold pays credits then refCredits, rest returned, counters") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "settle-credits");
    give(*l, user, BalanceField::Credits, "1.0");
    give(*l, user, BalanceField::RefCredits, "1.0");
    give(*l, user, BalanceField::CreditsNew, "2.0");
    std::string id = uniqueName("req");
    REQUIRE(l->reserve(hold(id, user, Pool::Credits, "1.5")) == ReserveStatus::Reserved);

    Usage u{100, 20, 30, 40, true};
    SettleOutcome s = l->settle(charge(id, user, Pool::Credits, "1.2", u));
    REQUIRE(s.status == SettleStatus::Settled);
    CHECK_MONEY(s.charged, usd("1.2"), 1);
    CHECK(s.shortfall.nanos == 0);

    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.credits, usd("0"), 3);
    CHECK_MONEY(b.refCredits, usd("0.8"), 3);
    CHECK_MONEY(b.creditsUsed, usd("1.2"), 1);
    CHECK_MONEY(b.creditsNew, usd("2.0"), 1);
    CHECK(b.creditsNewUsed.nanos == 0);
    CHECK(b.tokensUserNew == 0);
    CHECK(b.totalInputTokens == 150);
    CHECK(b.totalOutputTokens == 40);

    auto log = logOf(*l, user);
    REQUIRE(log.size() == 1);
    CHECK(log[0].requestId == id);
    CHECK(log[0].userId == user);
    CHECK(log[0].keyId == keyIdOf(user));
    CHECK(log[0].model == "test-model");
    CHECK(log[0].usage == u);
    CHECK_MONEY(log[0].cost, usd("1.2"), 1);
    CHECK(log[0].shortfall.nanos == 0);
    CHECK(log[0].creditType == "ohmygpt");
    CHECK(log[0].statusCode == 200);
    CHECK(log[0].latencyMs == 12);
    CHECK(log[0].success);
}

TEST_CASE("settle, creditsNew pool: creditsNew only, tokensUserNew, the other pool untouched") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "settle-new");
    give(*l, user, BalanceField::CreditsNew, "2.0");
    give(*l, user, BalanceField::Credits, "1.0");
    std::string id = uniqueName("req");
    REQUIRE(l->reserve(hold(id, user, Pool::CreditsNew, "1.0")) == ReserveStatus::Reserved);
    SettleOutcome s = l->settle(charge(id, user, Pool::CreditsNew, "0.25"));
    REQUIRE(s.status == SettleStatus::Settled);
    CHECK_MONEY(s.charged, usd("0.25"), 1);

    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNew, usd("1.75"), 3);
    CHECK_MONEY(b.creditsNewUsed, usd("0.25"), 1);
    CHECK(b.tokensUserNew == 190);
    CHECK(b.totalInputTokens == 150);
    CHECK(b.totalOutputTokens == 40);
    CHECK_MONEY(b.credits, usd("1.0"), 1);
    CHECK(b.refCredits.nanos == 0);
    CHECK(b.creditsUsed.nanos == 0);
    auto log = logOf(*l, user);
    REQUIRE(log.size() == 1);
    CHECK(log[0].creditType == "openhands");
}

TEST_CASE("settle is exactly once per request id") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "idempotent");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    std::string id = uniqueName("req");
    REQUIRE(l->reserve(hold(id, user, Pool::CreditsNew, "0.5")) == ReserveStatus::Reserved);
    Charge c = charge(id, user, Pool::CreditsNew, "0.3");
    REQUIRE(l->settle(c).status == SettleStatus::Settled);
    Balance before = balanceOf(*l, user);

    SettleOutcome again = l->settle(c);
    CHECK(again.status == SettleStatus::AlreadySettled);
    Charge bigger = c;
    bigger.cost = usd("0.6");
    CHECK(l->settle(bigger).status == SettleStatus::AlreadySettled);
    // A retried request reserves under a settled id: its settle gives the hold back.
    CHECK(l->reserve(hold(id, user, Pool::CreditsNew, "0.2")) != ReserveStatus::LedgerUnavailable);
    CHECK(l->settle(c).status == SettleStatus::AlreadySettled);
    Balance after = balanceOf(*l, user);
    CHECK(after.creditsNew == before.creditsNew);
    CHECK(after.creditsNewUsed == before.creditsNewUsed);
    CHECK(after.totalInputTokens == before.totalInputTokens);
    CHECK(logOf(*l, user).size() == 1);
    CHECK_MONEY(after.creditsNew, usd("0.7"), 3);
}

TEST_CASE("settleBatch finds the ids settled before among its charges, of any format and time") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "refound");
    give(*l, user, BalanceField::CreditsNew, "10.0");
    // Ids as trollproxy makes them ("<prefix>_" + 11 hex digits of ms + 13 more):
    // some close in time, one an hour later, one another process's; and one of
    // another format.
    const std::string prefix = uniqueName("req") + "_", other = uniqueName("req") + "_";
    const std::int64_t ms = 1'700'000'000'000;
    auto idAt = [](const std::string& p, std::int64_t at, int n) {
        char digits[32];
        std::snprintf(digits, sizeof digits, "%011llx%013x", static_cast<unsigned long long>(at),
                      n);
        return p + digits;
    };
    std::vector<std::string> ids = {idAt(prefix, ms, 1),      idAt(prefix, ms + 40, 2),
                                    idAt(prefix, ms + 90, 3), idAt(prefix, ms + 3'600'000, 4),
                                    idAt(other, ms + 50, 5),  uniqueName("plain"),
                                    idAt(prefix, ms + 60, 6), idAt(prefix, ms + 3'600'010, 7),
                                    idAt(other, ms + 51, 8),  uniqueName("plain")};
    // The first five settled one by one before; the batch brings all ten.
    for (std::size_t i = 0; i < 5; ++i)
        REQUIRE(l->settle(charge(ids[i], user, Pool::CreditsNew, "0.1")).status ==
                SettleStatus::Settled);
    std::vector<Charge> batch;
    for (const std::string& id : ids)
        batch.push_back(charge(id, user, Pool::CreditsNew, "0.1"));
    std::vector<SettleOutcome> out = l->settleBatch(batch);
    REQUIRE(out.size() == ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
        INFO(ids[i]);
        CHECK(out[i].status == (i < 5 ? SettleStatus::AlreadySettled : SettleStatus::Settled));
    }
    CHECK_MONEY(balanceOf(*l, user).creditsNew, usd("9.0"), 10);
    CHECK(logOf(*l, user).size() == ids.size());
}

TEST_CASE("responseOwner: the user whose settled request created the response") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "responder");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    Charge c = charge(uniqueName("req"), user, Pool::CreditsNew, "0.1");
    c.responseId = uniqueName("resp");
    REQUIRE(l->settle(c).status == SettleStatus::Settled);
    auto owner = l->responseOwner(c.responseId);
    REQUIRE(owner);
    CHECK(*owner == user);
    auto unknown = l->responseOwner(uniqueName("resp"));
    REQUIRE_FALSE(unknown);
    CHECK(unknown.error().code == ErrorCode::NotFound);
}

TEST_CASE("a cost above the hold takes what the balance has and records the shortfall") {
    auto l = openTestLedger();
    auto shortBefore = l->totalShortfall();
    REQUIRE(shortBefore);

    std::string user = makeUser(*l, "shortfall");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    std::string id = uniqueName("req");
    REQUIRE(l->reserve(hold(id + "-a", user, Pool::CreditsNew, "0.5")) == ReserveStatus::Reserved);
    SettleOutcome s = l->settle(charge(id + "-a", user, Pool::CreditsNew, "1.7"));
    REQUIRE(s.status == SettleStatus::Settled);
    CHECK_MONEY(s.charged, usd("1.0"), 2);
    CHECK_MONEY(s.shortfall, usd("0.7"), 2);
    Balance b = balanceOf(*l, user);
    CHECK(b.creditsNew.nanos >= 0);
    CHECK_MONEY(b.creditsNew, usd("0"), 3);
    CHECK_MONEY(b.creditsNewUsed, usd("1.0"), 2);

    // Credits pool without a hold: credits, then refCredits, then shortfall.
    give(*l, user, BalanceField::Credits, "0.2");
    give(*l, user, BalanceField::RefCredits, "0.1");
    SettleOutcome t = l->settle(charge(id + "-b", user, Pool::Credits, "0.5"));
    REQUIRE(t.status == SettleStatus::Settled);
    CHECK_MONEY(t.charged, usd("0.3"), 2);
    CHECK_MONEY(t.shortfall, usd("0.2"), 2);
    b = balanceOf(*l, user);
    CHECK(b.credits.nanos >= 0);
    CHECK(b.refCredits.nanos >= 0);
    CHECK_MONEY(b.credits, usd("0"), 2);
    CHECK_MONEY(b.refCredits, usd("0"), 2);
    CHECK_MONEY(b.creditsNew, usd("0"), 3);

    auto log = logOf(*l, user);
    REQUIRE(log.size() == 2);
    for (const LogEntry& e : log) {
        if (e.requestId == id + "-a") {
            CHECK_MONEY(e.cost, usd("1.0"), 2);
            CHECK_MONEY(e.shortfall, usd("0.7"), 2);
        } else {
            CHECK(e.requestId == id + "-b");
            CHECK_MONEY(e.cost, usd("0.3"), 2);
            CHECK_MONEY(e.shortfall, usd("0.2"), 2);
        }
    }
    auto shortAfter = l->totalShortfall();
    REQUIRE(shortAfter);
    CHECK_MONEY(*shortAfter - *shortBefore, usd("0.9"), 4);
}

TEST_CASE("settle without a hold takes the cost directly") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "nohold");
    give(*l, user, BalanceField::Credits, "1.0");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    std::string id = uniqueName("req");
    SettleOutcome s = l->settle(charge(id + "-1", user, Pool::Credits, "0.4"));
    REQUIRE(s.status == SettleStatus::Settled);
    CHECK_MONEY(s.charged, usd("0.4"), 1);
    SettleOutcome t = l->settle(charge(id + "-2", user, Pool::CreditsNew, "0.123456789"));
    REQUIRE(t.status == SettleStatus::Settled);
    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.credits, usd("0.6"), 2);
    CHECK_MONEY(b.creditsUsed, usd("0.4"), 1);
    CHECK_MONEY(b.creditsNew, usd("0.876543211"), 2);
    CHECK_MONEY(b.creditsNewUsed, usd("0.123456789"), 1);
}

TEST_CASE("release returns a hold to the fields it came from, once") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "release");
    give(*l, user, BalanceField::Credits, "0.3");
    give(*l, user, BalanceField::RefCredits, "0.5");
    std::string id = uniqueName("req");
    REQUIRE(l->reserve(hold(id, user, Pool::Credits, "0.5")) == ReserveStatus::Reserved);
    Balance held = balanceOf(*l, user);
    CHECK_MONEY(held.credits, usd("0"), 2);
    CHECK_MONEY(held.refCredits, usd("0.3"), 2);

    REQUIRE(l->release(id));
    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.credits, usd("0.3"), 3);
    CHECK_MONEY(b.refCredits, usd("0.5"), 3);
    REQUIRE(l->release(id)); // a second release changes nothing
    REQUIRE(l->release(uniqueName("never-held")));
    Balance again = balanceOf(*l, user);
    CHECK(again.credits == b.credits);
    CHECK(again.refCredits == b.refCredits);
    CHECK(again.creditsUsed.nanos == 0);

    // Settling after a release charges the balance directly, once.
    REQUIRE(l->settle(charge(id, user, Pool::Credits, "0.1")).status == SettleStatus::Settled);
    CHECK_MONEY(balanceOf(*l, user).credits, usd("0.2"), 4);
    REQUIRE(l->release(id)); // settled: nothing to release
    CHECK_MONEY(balanceOf(*l, user).credits, usd("0.2"), 4);
}

TEST_CASE("sweepExpiredHolds releases only expired holds") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "sweep");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    std::string id = uniqueName("req");
    std::int64_t now = nowMs();
    REQUIRE(l->reserve(hold(id + "-old", user, Pool::CreditsNew, "0.25", now - 1000)) ==
            ReserveStatus::Reserved);
    REQUIRE(l->reserve(hold(id + "-new", user, Pool::CreditsNew, "0.5", now + 3'600'000)) ==
            ReserveStatus::Reserved);
    CHECK_MONEY(balanceOf(*l, user).creditsNew, usd("0.25"), 3);

    auto swept = l->sweepExpiredHolds(now);
    REQUIRE_MESSAGE(swept, swept.error().message);
    CHECK(*swept >= 1);
    CHECK_MONEY(balanceOf(*l, user).creditsNew, usd("0.5"), 4);

    // The live hold is still there: settling it uses it.
    SettleOutcome s = l->settle(charge(id + "-new", user, Pool::CreditsNew, "0.5"));
    REQUIRE(s.status == SettleStatus::Settled);
    CHECK(s.shortfall.nanos == 0);
    CHECK_MONEY(balanceOf(*l, user).creditsNew, usd("0.5"), 5);
}

TEST_CASE(
    "releaseHolds gives back a dead process's holds by request id prefix; balance shows holds") {
    auto l = openTestLedger();
    std::string a = makeUser(*l, "relholds-a");
    std::string b = makeUser(*l, "relholds-b");
    give(*l, a, BalanceField::Credits, "1.0");
    give(*l, a, BalanceField::RefCredits, "1.0");
    give(*l, a, BalanceField::CreditsNew, "1.0");
    give(*l, b, BalanceField::CreditsNew, "1.0");
    std::string base = uniqueName("rh");
    REQUIRE(l->reserve(hold(base + "-p1-a", a, Pool::Credits, "1.5")) == ReserveStatus::Reserved);
    REQUIRE(l->reserve(hold(base + "-p1-b", b, Pool::CreditsNew, "0.4")) ==
            ReserveStatus::Reserved);
    REQUIRE(l->reserve(hold(base + "-p2-a", a, Pool::CreditsNew, "0.3")) ==
            ReserveStatus::Reserved);

    // balance: the held money by the field it came from, next to what is left.
    Balance ba = balanceOf(*l, a);
    CHECK(ba.heldCredits == usd("1.0"));
    CHECK(ba.heldRefCredits == usd("0.5"));
    CHECK(ba.heldCreditsNew == usd("0.3"));
    CHECK_MONEY(ba.credits, usd("0"), 2);
    CHECK_MONEY(ba.refCredits, usd("0.5"), 2);
    CHECK_MONEY(ba.creditsNew, usd("0.7"), 2);
    Balance bb = balanceOf(*l, b);
    CHECK(bb.heldCreditsNew == usd("0.4"));
    CHECK(bb.heldCredits.nanos == 0);
    CHECK(bb.heldRefCredits.nanos == 0);

    auto released = l->releaseHolds(base + "-p1-");
    REQUIRE_MESSAGE(released, released.error().message);
    CHECK(*released == 2);
    ba = balanceOf(*l, a);
    CHECK_MONEY(ba.credits, usd("1.0"), 3);
    CHECK_MONEY(ba.refCredits, usd("1.0"), 3);
    CHECK_MONEY(ba.creditsNew, usd("0.7"), 2);
    CHECK(ba.heldCredits.nanos == 0);
    CHECK(ba.heldRefCredits.nanos == 0);
    CHECK(ba.heldCreditsNew == usd("0.3")); // p2-a is still held
    bb = balanceOf(*l, b);
    CHECK_MONEY(bb.creditsNew, usd("1.0"), 3);
    CHECK(bb.heldCreditsNew.nanos == 0);
    CHECK(ba.creditsUsed.nanos == 0);
    CHECK(bb.creditsNewUsed.nanos == 0);

    // The other process's hold settles normally: the hold pays, the rest goes back.
    SettleOutcome s2 = l->settle(charge(base + "-p2-a", a, Pool::CreditsNew, "0.1"));
    REQUIRE(s2.status == SettleStatus::Settled);
    CHECK(s2.shortfall.nanos == 0);
    ba = balanceOf(*l, a);
    CHECK_MONEY(ba.creditsNew, usd("0.9"), 4);
    CHECK(ba.heldCreditsNew.nanos == 0);

    // A late settle of a released request: as after a sweep, the cost comes from the balance.
    SettleOutcome s1 = l->settle(charge(base + "-p1-a", a, Pool::Credits, "0.2"));
    REQUIRE(s1.status == SettleStatus::Settled);
    CHECK_MONEY(s1.charged, usd("0.2"), 1);
    ba = balanceOf(*l, a);
    CHECK_MONEY(ba.credits, usd("0.8"), 5);
    CHECK_MONEY(ba.refCredits, usd("1.0"), 3);
    CHECK_MONEY(ba.creditsUsed, usd("0.2"), 1);

    auto again = l->releaseHolds(base + "-p1-");
    REQUIRE_MESSAGE(again, again.error().message);
    CHECK(*again == 0);
    auto empty = l->releaseHolds("");
    REQUIRE_FALSE(empty);
    CHECK(empty.error().code == ErrorCode::InvalidArgument);
}

TEST_CASE("releaseHolds matches the prefix literally: no wildcards, no regex, case kept") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "relholds-literal");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    std::string base = uniqueName("rl");
    for (const char* tail : {"-x%1", "-xz1", "-a_1", "-ab1", "-v.1", "-v_2", "-vz3", "-Q1"})
        REQUIRE(l->reserve(hold(base + tail, user, Pool::CreditsNew, "0.01")) ==
                ReserveStatus::Reserved);
    CHECK(balanceOf(*l, user).heldCreditsNew == usd("0.08"));

    auto count = [&](const std::string& prefix) {
        auto r = l->releaseHolds(prefix);
        REQUIRE_MESSAGE(r, r.error().message);
        return *r;
    };
    CHECK(count(base + "-x%") == 1); // not "-xz1"
    CHECK(count(base + "-a_") == 1); // not "-ab1"
    CHECK(count(base + "-v.") == 1); // not "-v_2" nor "-vz3"
    CHECK(count(base + "-q") == 0);  // not "-Q1"
    CHECK(count(base + "-x%") == 0);
    Balance b = balanceOf(*l, user);
    CHECK(b.heldCreditsNew == usd("0.05"));
    CHECK_MONEY(b.creditsNew, usd("0.95"), 12);
    CHECK(count(base + "-") == 5);
    b = balanceOf(*l, user);
    CHECK(b.heldCreditsNew.nanos == 0);
    CHECK_MONEY(b.creditsNew, usd("1.0"), 16);
}

TEST_CASE("renewHold: a sweep between the old and the new expiry keeps the hold") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "renew");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    std::string id = uniqueName("req");
    std::int64_t t = nowMs();
    REQUIRE(l->reserve(hold(id + "-stream", user, Pool::CreditsNew, "0.4", t + 60'000)) ==
            ReserveStatus::Reserved);
    REQUIRE(l->reserve(hold(id + "-other", user, Pool::CreditsNew, "0.1", t + 60'000)) ==
            ReserveStatus::Reserved);
    Balance before = balanceOf(*l, user);
    CHECK_MONEY(before.creditsNew, usd("0.5"), 3);

    auto r = l->renewHold(id + "-stream", t + 600'000);
    REQUIRE_MESSAGE(r, r.error().message);
    REQUIRE(l->renewHold(id + "-stream", t + 600'000)); // the same expiry again is fine
    Balance renewed = balanceOf(*l, user);
    CHECK(renewed.creditsNew == before.creditsNew);
    CHECK(renewed.credits == before.credits);
    CHECK(renewed.refCredits == before.refCredits);
    CHECK(renewed.creditsNewUsed == before.creditsNewUsed);

    // Past the old expiry, before the new one: only the hold that was not renewed goes back.
    auto swept = l->sweepExpiredHolds(t + 120'000);
    REQUIRE_MESSAGE(swept, swept.error().message);
    CHECK(*swept >= 1);
    CHECK_MONEY(balanceOf(*l, user).creditsNew, usd("0.6"), 4);
    CHECK(l->reserve(hold(id + "-second", user, Pool::CreditsNew, "0.7")) ==
          ReserveStatus::InsufficientCredits);

    // The stream ends: its hold pays.
    SettleOutcome s = l->settle(charge(id + "-stream", user, Pool::CreditsNew, "0.3"));
    REQUIRE(s.status == SettleStatus::Settled);
    CHECK_MONEY(s.charged, usd("0.3"), 1);
    CHECK(s.shortfall.nanos == 0);
    Balance settled = balanceOf(*l, user);
    CHECK_MONEY(settled.creditsNew, usd("0.7"), 6);
    CHECK_MONEY(settled.creditsNewUsed, usd("0.3"), 1);

    // Settled: nothing to renew, and nothing changes.
    auto late = l->renewHold(id + "-stream", t + 900'000);
    REQUIRE_FALSE(late);
    CHECK(late.error().code == ErrorCode::NotFound);
    Balance after = balanceOf(*l, user);
    CHECK(after.creditsNew == settled.creditsNew);
    CHECK(after.creditsNewUsed == settled.creditsNewUsed);
}

TEST_CASE("renewHold: the sweep goes by the new expiry; gone or unknown ids are NotFound") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "renew-gone");
    give(*l, user, BalanceField::Credits, "0.3");
    give(*l, user, BalanceField::RefCredits, "0.5");
    std::string id = uniqueName("req");
    std::int64_t t = nowMs();
    Balance start = balanceOf(*l, user);

    REQUIRE(l->reserve(hold(id + "-a", user, Pool::Credits, "0.5", t + 60'000)) ==
            ReserveStatus::Reserved);
    Balance held = balanceOf(*l, user);
    REQUIRE(l->renewHold(id + "-a", t + 300'000));
    auto kept = l->sweepExpiredHolds(t + 300'000 - 1);
    REQUIRE(kept);
    Balance stillHeld = balanceOf(*l, user);
    CHECK(stillHeld.credits == held.credits);
    CHECK(stillHeld.refCredits == held.refCredits);
    auto swept = l->sweepExpiredHolds(t + 300'000 + 1);
    REQUIRE(swept);
    CHECK(*swept >= 1);
    Balance back = balanceOf(*l, user);
    CHECK_MONEY(back.credits, start.credits, 3);
    CHECK_MONEY(back.refCredits, start.refCredits, 3);
    auto gone = l->renewHold(id + "-a", t + 900'000);
    REQUIRE_FALSE(gone);
    CHECK(gone.error().code == ErrorCode::NotFound);

    REQUIRE(l->reserve(hold(id + "-b", user, Pool::Credits, "0.4")) == ReserveStatus::Reserved);
    REQUIRE(l->release(id + "-b"));
    auto released = l->renewHold(id + "-b", t + 900'000);
    REQUIRE_FALSE(released);
    CHECK(released.error().code == ErrorCode::NotFound);

    auto unknown = l->renewHold(uniqueName("never-held"), t + 900'000);
    REQUIRE_FALSE(unknown);
    CHECK(unknown.error().code == ErrorCode::NotFound);

    Balance end = balanceOf(*l, user);
    CHECK(end.credits == back.credits);
    CHECK(end.refCredits == back.refCredits);
    CHECK(end.creditsUsed.nanos == 0);
    CHECK(end.creditsNew.nanos == 0);
    CHECK(logOf(*l, user).empty());
}

TEST_CASE("recordRequest logs without money, once") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "record");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    LogEntry e;
    e.requestId = uniqueName("req");
    e.userId = user;
    e.keyId = "k";
    e.model = "refused-model";
    e.creditType = "openhands";
    e.statusCode = 402;
    e.latencyMs = 3;
    e.success = false;
    e.createdAtMs = nowMs();
    REQUIRE(l->recordRequest(e));
    REQUIRE(l->recordRequest(e)); // same id: ignored
    auto log = logOf(*l, user);
    REQUIRE(log.size() == 1);
    CHECK(log[0].requestId == e.requestId);
    CHECK(log[0].statusCode == 402);
    CHECK_FALSE(log[0].success);
    CHECK(log[0].cost.nanos == 0);
    CHECK(log[0].model == "refused-model");
    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNew, usd("1.0"), 1);
    CHECK(b.creditsNewUsed.nanos == 0);
}

TEST_CASE("usage lists the newest entries first") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "usage");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    std::string id = uniqueName("req");
    std::int64_t t = nowMs();
    for (int i = 0; i < 3; ++i) {
        Charge c = charge(id + "-" + std::to_string(i), user, Pool::CreditsNew, "0.01");
        c.createdAtMs = t + i * 1000;
        REQUIRE(l->settle(c).status == SettleStatus::Settled);
    }
    auto two = logOf(*l, user, 2);
    REQUIRE(two.size() == 2);
    CHECK(two[0].requestId == id + "-2");
    CHECK(two[1].requestId == id + "-1");
    CHECK(two[0].createdAtMs == t + 2000);
    CHECK(logOf(*l, user).size() == 3);
    CHECK(logOf(*l, uniqueName("nobody")).empty());
}

TEST_CASE("admin errors change nothing") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "admin");
    give(*l, user, BalanceField::Credits, "1.0");

    auto dup = l->addUser(user);
    REQUIRE_FALSE(dup);
    CHECK(dup.error().code == ErrorCode::Conflict);

    std::string ghost = userName("ghost");
    auto key = l->addKey(ghost);
    REQUIRE_FALSE(key);
    CHECK(key.error().code == ErrorCode::NotFound);
    auto cr = l->credit(ghost, BalanceField::Credits, usd("1"));
    REQUIRE_FALSE(cr);
    CHECK(cr.error().code == ErrorCode::NotFound);
    auto bal = l->balance(ghost);
    REQUIRE_FALSE(bal);
    CHECK(bal.error().code == ErrorCode::NotFound);

    for (const char* field : {"creditsUsed", "tokensUserNew", "", "Credits", "apiKey"}) {
        auto bad = parseBalanceField(field); // what trollproxy-admin's POOL goes through
        REQUIRE_FALSE(bad);
        CHECK(bad.error().code == ErrorCode::InvalidArgument);
    }
    for (BalanceField f :
         {BalanceField::Credits, BalanceField::RefCredits, BalanceField::CreditsNew})
        CHECK(*parseBalanceField(balanceFieldName(f)) == f);
    auto neg = l->credit(user, BalanceField::Credits, Money{-1});
    REQUIRE_FALSE(neg);
    CHECK(neg.error().code == ErrorCode::InvalidArgument);
    REQUIRE(l->credit(user, BalanceField::Credits, Money{0}));

    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.credits, usd("1.0"), 1);
    CHECK(b.creditsUsed.nanos == 0);
    CHECK(b.refCredits.nanos == 0);
    CHECK(b.creditsNew.nanos == 0);
    CHECK(b.tokensUserNew == 0);
}

TEST_CASE("200 parallel reserve/settle cycles on a balance that covers 50") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "parallel");
    // 50 holds of 0.01 fit; half from `credits`, half spilling into `refCredits`.
    give(*l, user, BalanceField::Credits, "0.25");
    give(*l, user, BalanceField::RefCredits, "0.25");
    Balance start = balanceOf(*l, user);
    std::string id = uniqueName("req");

    constexpr int kCycles = 200;
    constexpr int kThreads = 20;
    std::atomic<int> next{0}, reserved{0}, refused{0}, unavailable{0};
    std::mutex m;
    std::vector<std::string> settled;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&] {
            for (int i; (i = next++) < kCycles;) {
                std::string rid = id + "-" + std::to_string(i);
                ReserveStatus r = l->reserve(hold(rid, user, Pool::Credits, "0.01"));
                if (r == ReserveStatus::InsufficientCredits) {
                    ++refused;
                    continue;
                }
                if (r != ReserveStatus::Reserved) {
                    ++unavailable;
                    continue;
                }
                ++reserved;
                Charge c = charge(rid, user, Pool::Credits, "0.01");
                if (l->settle(c).status == SettleStatus::Settled) {
                    std::lock_guard lock(m);
                    settled.push_back(rid);
                } else {
                    ++unavailable;
                }
            }
        });
    }
    for (auto& t : threads)
        t.join();

    CHECK(unavailable == 0);
    CHECK(reserved <= 50);
    CHECK(reserved == 50);
    CHECK(refused == kCycles - reserved);
    CHECK(settled.size() == static_cast<std::size_t>(reserved.load()));

    Balance end = balanceOf(*l, user);
    CHECK(end.credits.nanos >= 0);
    CHECK(end.refCredits.nanos >= 0);
    auto log = logOf(*l, user, 10'000);
    std::map<std::string, int> seen;
    Money logged;
    for (const LogEntry& e : log) {
        ++seen[e.requestId];
        logged += e.cost;
    }
    CHECK(log.size() == settled.size());
    for (const std::string& rid : settled) {
        INFO(rid);
        CHECK(seen[rid] == 1);
    }
    Money decrease = (start.credits + start.refCredits) - (end.credits + end.refCredits);
    std::int64_t n = static_cast<std::int64_t>(settled.size());
    CHECK_MONEY(logged, decrease, n);
    CHECK_MONEY(end.creditsUsed, logged, n);
    CHECK_MONEY(end.credits + end.refCredits, Money{0}, n);
}
