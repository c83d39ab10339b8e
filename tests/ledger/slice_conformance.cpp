// Budget slices (#13) on every ledger backend: reserveSlice, charges that draw on a
// slice, settleBatch, and the holds operations on slices; exact to the nano-dollar
// (MongoDB: one nano-dollar per operation, its fields being doubles).
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <thread>
#include <vector>

#include "ledger_test_util.hpp"
#include "trollproxy/ledger.hpp"
#include "trollproxy/ledger_admin.hpp"

using namespace trollproxy;
using namespace trollproxy::test;

namespace {

constexpr std::int64_t kHourMs = 3'600'000;

SliceRequest sliceRequest(const std::string& id, const std::string& user, Pool pool,
                          const char* want, std::int64_t permille = 1000,
                          const char* atLeast = "0.000000001", std::int64_t expiresAtMs = 0) {
    return SliceRequest{id,
                        user,
                        pool,
                        usd(want),
                        usd(atLeast),
                        permille,
                        expiresAtMs ? expiresAtMs : nowMs() + kHourMs};
}

// Reserves a slice that must be granted exactly `expected`.
void grant(CreditLedger& l, const SliceRequest& r, const char* expected) {
    SliceGrant g = l.reserveSlice(r);
    REQUIRE(g.status == ReserveStatus::Reserved);
    CHECK(g.added == usd(expected));
}

void refused(CreditLedger& l, const SliceRequest& r) {
    SliceGrant g = l.reserveSlice(r);
    CHECK(g.status == ReserveStatus::InsufficientCredits);
    CHECK(g.added.nanos == 0);
}

Charge onSlice(Charge c, const std::string& sliceId, const char* share) {
    c.holdId = sliceId;
    c.holdShare = usd(share);
    return c;
}

SettleOutcome settled(CreditLedger& l, const Charge& c, const char* charged,
                      const char* shortfall = "0") {
    SettleOutcome s = l.settle(c);
    REQUIRE(s.status == SettleStatus::Settled);
    CHECK_MONEY(s.charged, usd(charged), 1);
    CHECK_MONEY(s.shortfall, usd(shortfall), 1);
    return s;
}

// No field below zero, and every nano-dollar credited is free, held or used.
void checkConserved(const Balance& b, const char* creditedNew, const char* creditedCredits,
                    std::int64_t ops) {
    CHECK(b.credits.nanos >= 0);
    CHECK(b.refCredits.nanos >= 0);
    CHECK(b.creditsNew.nanos >= 0);
    CHECK(b.heldCredits.nanos >= 0);
    CHECK(b.heldRefCredits.nanos >= 0);
    CHECK(b.heldCreditsNew.nanos >= 0);
    CHECK_MONEY(b.creditsNew + b.heldCreditsNew + b.creditsNewUsed, usd(creditedNew), ops);
    CHECK_MONEY(b.credits + b.refCredits + b.heldCredits + b.heldRefCredits + b.creditsUsed,
                usd(creditedCredits), ops);
}

} // namespace

TEST_CASE("reserveSlice grants min(want, the permille share of the free balance)") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "slice-grant");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    give(*l, user, BalanceField::Credits, "0.6");
    std::string base = uniqueName("slice");

    grant(*l, sliceRequest(base + "-1", user, Pool::CreditsNew, "0.3", 500), "0.3");
    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNew, usd("0.7"), 2);
    CHECK_MONEY(b.heldCreditsNew, usd("0.3"), 1);
    CHECK_MONEY(b.credits, usd("0.6"), 1);
    CHECK(b.heldCredits.nanos == 0);
    // Half of the 0.7 left, below want.
    grant(*l, sliceRequest(base + "-2", user, Pool::CreditsNew, "1.0", 500), "0.35");
    b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNew, usd("0.35"), 3);
    CHECK_MONEY(b.heldCreditsNew, usd("0.65"), 2);

    // Integer rounding: 1234 × 333 / 1000 = 410.9 → 410; a grant equal to atLeast is given.
    std::string small = makeUser(*l, "slice-round");
    give(*l, small, BalanceField::CreditsNew, "0.000001234");
    grant(*l, sliceRequest(base + "-r1", small, Pool::CreditsNew, "1.0", 333), "0.00000041");
    grant(*l, sliceRequest(base + "-r2", small, Pool::CreditsNew, "1.0", 500, "0.000000412"),
          "0.000000412");
    Balance s = balanceOf(*l, small);
    CHECK_MONEY(s.creditsNew, usd("0.000000412"), 3);
    CHECK_MONEY(s.heldCreditsNew, usd("0.000000822"), 2);
}

TEST_CASE("reserveSlice below atLeast is refused and changes nothing") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "slice-refuse");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    give(*l, user, BalanceField::Credits, "0.6");
    std::string id = uniqueName("slice");
    grant(*l, sliceRequest(id, user, Pool::CreditsNew, "0.4"), "0.4");
    Balance before = balanceOf(*l, user);

    refused(*l, sliceRequest(id, user, Pool::CreditsNew, "1.0", 500, "0.31")); // 0.3 < 0.31
    refused(*l, sliceRequest(id + "-b", user, Pool::CreditsNew, "1.0", 500, "0.31"));
    refused(*l, sliceRequest(id, user, Pool::CreditsNew, "0"));
    refused(*l, sliceRequest(id, user, Pool::CreditsNew, "0.1", 0));
    refused(*l, sliceRequest(id + "-c", user, Pool::Credits, "1.0", 500, "0.300000001"));
    refused(*l, sliceRequest(id + "-u", userName("nobody"), Pool::CreditsNew, "0.1"));
    // A refusal does not move the expiry either: a sweep now leaves the slice.
    refused(*l, sliceRequest(id, user, Pool::CreditsNew, "1.0", 500, "0.31", nowMs() - 1000));
    REQUIRE(l->sweepExpiredHolds(nowMs()));

    Balance after = balanceOf(*l, user);
    CHECK(after.creditsNew == before.creditsNew);
    CHECK(after.credits == before.credits);
    CHECK(after.refCredits == before.refCredits);
    CHECK(after.heldCreditsNew == before.heldCreditsNew);
    CHECK(after.heldCredits.nanos == 0);
    CHECK(after.heldRefCredits.nanos == 0);
    CHECK_MONEY(after.heldCreditsNew, usd("0.4"), 1);
}

TEST_CASE("a second reserveSlice grows the same slice and moves its expiry") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "slice-grow");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    std::string id = uniqueName("slice");
    std::int64_t t = nowMs();

    grant(*l, sliceRequest(id, user, Pool::CreditsNew, "0.2", 1000, "0.1", t + 60'000), "0.2");
    grant(*l, sliceRequest(id, user, Pool::CreditsNew, "0.1", 1000, "0.1", t + 600'000), "0.1");
    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNew, usd("0.7"), 3);
    CHECK_MONEY(b.heldCreditsNew, usd("0.3"), 2);
    REQUIRE(l->sweepExpiredHolds(t + 120'000)); // past the first expiry only
    CHECK_MONEY(balanceOf(*l, user).heldCreditsNew, usd("0.3"), 2);

    // The expiry is set, not extended: an earlier one makes the slice sweepable sooner.
    grant(*l, sliceRequest(id, user, Pool::CreditsNew, "0.05", 1000, "0.01", t + 90'000), "0.05");
    CHECK_MONEY(balanceOf(*l, user).heldCreditsNew, usd("0.35"), 3);
    auto swept = l->sweepExpiredHolds(t + 120'000);
    REQUIRE(swept);
    CHECK(*swept >= 1);
    b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNew, usd("1.0"), 5);
    CHECK(b.heldCreditsNew.nanos == 0);
    auto gone = l->renewHold(id, t + 900'000);
    REQUIRE_FALSE(gone);
    CHECK(gone.error().code == ErrorCode::NotFound);

    // renewHold on a slice: the sweep goes by the new expiry.
    grant(*l, sliceRequest(id + "-r", user, Pool::CreditsNew, "0.1", 1000, "0.1", t + 60'000),
          "0.1");
    REQUIRE(l->renewHold(id + "-r", t + 600'000));
    REQUIRE(l->sweepExpiredHolds(t + 120'000));
    CHECK_MONEY(balanceOf(*l, user).heldCreditsNew, usd("0.1"), 1);
    REQUIRE(l->release(id + "-r"));
    checkConserved(balanceOf(*l, user), "1.0", "0", 8);
}

TEST_CASE("a credits-pool slice takes credits before refCredits and pays in that order") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "slice-credits");
    give(*l, user, BalanceField::Credits, "0.3");
    give(*l, user, BalanceField::RefCredits, "0.5");
    give(*l, user, BalanceField::CreditsNew, "0.4");
    std::string id = uniqueName("slice");
    std::string req = uniqueName("req");

    grant(*l, sliceRequest(id, user, Pool::Credits, "0.5"), "0.5");
    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.credits, usd("0"), 2);
    CHECK_MONEY(b.refCredits, usd("0.3"), 2);
    CHECK_MONEY(b.heldCredits, usd("0.3"), 1);
    CHECK_MONEY(b.heldRefCredits, usd("0.2"), 1);
    CHECK_MONEY(b.creditsNew, usd("0.4"), 1);
    CHECK(b.heldCreditsNew.nanos == 0);

    settled(*l, onSlice(charge(req + "-1", user, Pool::Credits, "0.35"), id, "0.35"), "0.35");
    b = balanceOf(*l, user);
    CHECK(b.heldCredits.nanos == 0);
    CHECK_MONEY(b.heldRefCredits, usd("0.15"), 2);
    CHECK_MONEY(b.refCredits, usd("0.3"), 3);
    CHECK_MONEY(b.creditsUsed, usd("0.35"), 1);

    // 0.05 from the slice's refCredits, 0.05 more from the balance (credits is empty).
    settled(*l, onSlice(charge(req + "-2", user, Pool::Credits, "0.1"), id, "0.05"), "0.1");
    b = balanceOf(*l, user);
    CHECK_MONEY(b.heldRefCredits, usd("0.1"), 3);
    CHECK_MONEY(b.refCredits, usd("0.25"), 4);
    CHECK_MONEY(b.creditsUsed, usd("0.45"), 2);

    REQUIRE(l->release(id));
    b = balanceOf(*l, user);
    CHECK_MONEY(b.credits, usd("0"), 4);
    CHECK_MONEY(b.refCredits, usd("0.35"), 5);
    CHECK(b.heldCredits.nanos == 0);
    CHECK(b.heldRefCredits.nanos == 0);
    CHECK_MONEY(b.creditsNew, usd("0.4"), 1);
    CHECK(b.creditsNewUsed.nanos == 0);
    checkConserved(b, "0.4", "0.8", 8);
}

TEST_CASE("a charge draws at most holdShare from the slice, then the balance, then shortfall") {
    auto l = openTestLedger();
    auto shortBefore = l->totalShortfall();
    REQUIRE(shortBefore);
    std::string user = makeUser(*l, "slice-draw");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    std::string id = uniqueName("slice");
    std::string req = uniqueName("req");
    grant(*l, sliceRequest(id, user, Pool::CreditsNew, "0.4"), "0.4");

    auto step = [&](const char* n, const char* cost, const char* share, const char* charged,
                    const char* shortfall, const char* held, const char* free) {
        INFO("charge ", n);
        settled(*l, onSlice(charge(req + n, user, Pool::CreditsNew, cost), id, share), charged,
                shortfall);
        Balance b = balanceOf(*l, user);
        CHECK_MONEY(b.heldCreditsNew, usd(held), 5);
        CHECK_MONEY(b.creditsNew, usd(free), 5);
        checkConserved(b, "1.0", "0", 10);
    };
    step("-a", "0.1", "0.25", "0.1", "0", "0.3", "0.6"); // the share beyond the cost stays
    step("-b", "0.3", "0.1", "0.3", "0", "0.2", "0.4");  // 0.2 from the balance
    step("-c", "0.9", "0.1", "0.5", "0.4", "0.1", "0");  // the balance runs out
    step("-d", "0.3", "0.3", "0.1", "0.2", "0", "0");    // the slice runs out
    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNewUsed, usd("1.0"), 4);
    auto shortAfter = l->totalShortfall();
    REQUIRE(shortAfter);
    CHECK_MONEY(*shortAfter - *shortBefore, usd("0.6"), 4);

    auto log = logOf(*l, user);
    REQUIRE(log.size() == 4);
    Money logged, shortSum;
    for (const LogEntry& e : log) {
        logged += e.cost;
        shortSum += e.shortfall;
        if (e.requestId == req + "-c") {
            CHECK_MONEY(e.cost, usd("0.5"), 1);
            CHECK_MONEY(e.shortfall, usd("0.4"), 1);
        }
    }
    CHECK_MONEY(logged, usd("1.0"), 4);
    CHECK_MONEY(shortSum, usd("0.6"), 4);

    // The slice stays at zero with its expiry until released, and can grow again.
    REQUIRE(l->renewHold(id, nowMs() + kHourMs));
    give(*l, user, BalanceField::CreditsNew, "0.5");
    grant(*l, sliceRequest(id, user, Pool::CreditsNew, "0.1"), "0.1");
    CHECK_MONEY(balanceOf(*l, user).heldCreditsNew, usd("0.1"), 1);
    REQUIRE(l->release(id));
    b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNew, usd("0.5"), 8);
    CHECK(b.heldCreditsNew.nanos == 0);
    checkConserved(b, "1.5", "0", 12);
}

TEST_CASE("settling a request id again is AlreadySettled and leaves the slice alone") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "slice-again");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    std::string id = uniqueName("slice");
    std::string req = uniqueName("req");
    grant(*l, sliceRequest(id, user, Pool::CreditsNew, "0.5"), "0.5");
    Charge c = onSlice(charge(req, user, Pool::CreditsNew, "0.2"), id, "0.2");
    settled(*l, c, "0.2");
    Balance before = balanceOf(*l, user);
    CHECK_MONEY(before.heldCreditsNew, usd("0.3"), 2);
    CHECK_MONEY(before.creditsNew, usd("0.5"), 2);

    CHECK(l->settle(c).status == SettleStatus::AlreadySettled);
    Charge bigger = onSlice(charge(req, user, Pool::CreditsNew, "0.4"), id, "0.4");
    CHECK(l->settle(bigger).status == SettleStatus::AlreadySettled);
    Charge plain = charge(req, user, Pool::CreditsNew, "0.4"); // the same id without the slice
    CHECK(l->settle(plain).status == SettleStatus::AlreadySettled);
    // A retry reserved its own hold under the settled id: that hold goes back, not the slice.
    REQUIRE(l->reserve(hold(req, user, Pool::CreditsNew, "0.1")) == ReserveStatus::Reserved);
    CHECK(l->settle(c).status == SettleStatus::AlreadySettled);
    auto again = l->settleBatch(std::vector<Charge>{c, bigger});
    REQUIRE(again.size() == 2);
    CHECK(again[0].status == SettleStatus::AlreadySettled);
    CHECK(again[1].status == SettleStatus::AlreadySettled);

    Balance after = balanceOf(*l, user);
    CHECK(after.creditsNew == before.creditsNew);
    CHECK(after.heldCreditsNew == before.heldCreditsNew);
    CHECK(after.creditsNewUsed == before.creditsNewUsed);
    CHECK(after.totalInputTokens == before.totalInputTokens);
    CHECK(logOf(*l, user).size() == 1);
}

TEST_CASE("a charge naming a missing slice is taken from the free balance") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "slice-missing");
    give(*l, user, BalanceField::CreditsNew, "1.0");
    std::string id = uniqueName("slice");
    std::string req = uniqueName("req");

    settled(*l, onSlice(charge(req + "-1", user, Pool::CreditsNew, "0.2"), id + "-never", "0.3"),
            "0.2");
    CHECK_MONEY(balanceOf(*l, user).creditsNew, usd("0.8"), 2);
    // Settling does not bring a missing slice into being.
    auto never = l->renewHold(id + "-never", nowMs() + kHourMs);
    REQUIRE_FALSE(never);
    CHECK(never.error().code == ErrorCode::NotFound);

    // Released before the charge came.
    grant(*l, sliceRequest(id + "-rel", user, Pool::CreditsNew, "0.4"), "0.4");
    REQUIRE(l->release(id + "-rel"));
    settled(*l, onSlice(charge(req + "-2", user, Pool::CreditsNew, "0.1"), id + "-rel", "0.1"),
            "0.1");
    Balance b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNew, usd("0.7"), 5);
    CHECK(b.heldCreditsNew.nanos == 0);
    CHECK_FALSE(l->renewHold(id + "-rel", nowMs() + kHourMs));

    // Swept before the charge came; the cost runs past the balance.
    grant(*l, sliceRequest(id + "-swp", user, Pool::CreditsNew, "0.2", 1000, "0.1", nowMs() - 1000),
          "0.2");
    CHECK_MONEY(balanceOf(*l, user).creditsNew, usd("0.5"), 6);
    REQUIRE(l->sweepExpiredHolds(nowMs()));
    CHECK(balanceOf(*l, user).heldCreditsNew.nanos == 0);
    settled(*l, onSlice(charge(req + "-3", user, Pool::CreditsNew, "0.8"), id + "-swp", "0.2"),
            "0.7", "0.1");
    b = balanceOf(*l, user);
    CHECK_MONEY(b.creditsNew, usd("0"), 8);
    CHECK_MONEY(b.creditsNewUsed, usd("1.0"), 3);
    checkConserved(b, "1.0", "0", 10);
}

TEST_CASE("release, releaseHolds and the sweep give slices back; balance shows them held") {
    auto l = openTestLedger();
    std::string a = makeUser(*l, "slice-holds");
    give(*l, a, BalanceField::Credits, "1.0");
    give(*l, a, BalanceField::RefCredits, "1.0");
    give(*l, a, BalanceField::CreditsNew, "1.0");
    std::string base = uniqueName("sl");
    std::string req = uniqueName("req");

    grant(*l, sliceRequest(base + "-p1-credits", a, Pool::Credits, "1.5"), "1.5");
    grant(*l, sliceRequest(base + "-p1-new", a, Pool::CreditsNew, "0.4"), "0.4");
    grant(*l,
          sliceRequest(base + "-p2-new", a, Pool::CreditsNew, "0.2", 1000, "0.1", nowMs() - 1000),
          "0.2");
    REQUIRE(l->reserve(hold(base + "-p1-req", a, Pool::CreditsNew, "0.1")) ==
            ReserveStatus::Reserved);
    Balance b = balanceOf(*l, a);
    CHECK(b.heldCredits == usd("1.0"));
    CHECK(b.heldRefCredits == usd("0.5"));
    CHECK_MONEY(b.heldCreditsNew, usd("0.7"), 3);
    CHECK_MONEY(b.credits, usd("0"), 2);
    CHECK_MONEY(b.refCredits, usd("0.5"), 2);
    CHECK_MONEY(b.creditsNew, usd("0.3"), 4);

    settled(*l, onSlice(charge(req + "-1", a, Pool::Credits, "0.2"), base + "-p1-credits", "0.2"),
            "0.2");
    CHECK_MONEY(balanceOf(*l, a).heldCredits, usd("0.8"), 2);

    // release(slice): the rest goes back, once.
    grant(*l, sliceRequest(base + "-p3-new", a, Pool::CreditsNew, "0.1"), "0.1");
    settled(*l, onSlice(charge(req + "-2", a, Pool::CreditsNew, "0.04"), base + "-p3-new", "0.04"),
            "0.04");
    REQUIRE(l->release(base + "-p3-new"));
    REQUIRE(l->release(base + "-p3-new"));
    b = balanceOf(*l, a);
    CHECK_MONEY(b.creditsNew, usd("0.26"), 8);
    CHECK_MONEY(b.heldCreditsNew, usd("0.7"), 4);

    auto released = l->releaseHolds(base + "-p1-");
    REQUIRE_MESSAGE(released, released.error().message);
    CHECK(*released == 3);
    b = balanceOf(*l, a);
    CHECK_MONEY(b.credits, usd("0.8"), 5);
    CHECK_MONEY(b.refCredits, usd("1.0"), 4);
    CHECK(b.heldCredits.nanos == 0);
    CHECK(b.heldRefCredits.nanos == 0);
    CHECK_MONEY(b.creditsNew, usd("0.76"), 10);
    CHECK_MONEY(b.heldCreditsNew, usd("0.2"), 1); // p2 is another process's

    auto swept = l->sweepExpiredHolds(nowMs());
    REQUIRE(swept);
    CHECK(*swept >= 1);
    b = balanceOf(*l, a);
    CHECK_MONEY(b.creditsNew, usd("0.96"), 12);
    CHECK(b.heldCreditsNew.nanos == 0);
    CHECK_MONEY(b.creditsUsed, usd("0.2"), 1);
    CHECK_MONEY(b.creditsNewUsed, usd("0.04"), 1);
    checkConserved(b, "1.0", "2.0", 16);
}

TEST_CASE("settleBatch: mixed users and pools, a duplicate id, outcomes in order, once") {
    auto l = openTestLedger();
    std::string a = makeUser(*l, "batch-a");
    std::string b = makeUser(*l, "batch-b");
    give(*l, a, BalanceField::CreditsNew, "1.0");
    give(*l, a, BalanceField::Credits, "0.5");
    give(*l, b, BalanceField::Credits, "0.2");
    give(*l, b, BalanceField::RefCredits, "0.3");
    std::string sa = uniqueName("slice-a"), sb = uniqueName("slice-b");
    std::string req = uniqueName("req");
    grant(*l, sliceRequest(sa, a, Pool::CreditsNew, "0.5"), "0.5");
    grant(*l, sliceRequest(sb, b, Pool::Credits, "0.4"), "0.4");
    REQUIRE(l->reserve(hold(req + "-6", a, Pool::CreditsNew, "0.3")) == ReserveStatus::Reserved);

    std::vector<Charge> batch{
        onSlice(charge(req + "-1", a, Pool::CreditsNew, "0.1"), sa, "0.1"),
        onSlice(charge(req + "-2", b, Pool::Credits, "0.3"), sb, "0.25"),
        charge(req + "-3", a, Pool::Credits, "0.2"),
        onSlice(charge(req + "-1", a, Pool::CreditsNew, "0.4"), sa, "0.4"), // the same id
        charge(req + "-5", b, Pool::CreditsNew, "0.1"),                     // b has no creditsNew
        charge(req + "-6", a, Pool::CreditsNew, "0.05"),                    // its own hold
    };
    auto out = l->settleBatch(batch);
    REQUIRE(out.size() == 6);
    const char* charged[] = {"0.1", "0.3", "0.2", "0", "0", "0.05"};
    const char* shortfall[] = {"0", "0", "0", "0", "0.1", "0"};
    for (std::size_t i = 0; i < out.size(); ++i) {
        INFO("outcome ", i);
        CHECK(out[i].status == (i == 3 ? SettleStatus::AlreadySettled : SettleStatus::Settled));
        if (i != 3) {
            CHECK_MONEY(out[i].charged, usd(charged[i]), 1);
            CHECK_MONEY(out[i].shortfall, usd(shortfall[i]), 1);
        }
    }

    Balance ba = balanceOf(*l, a);
    CHECK_MONEY(ba.creditsNew, usd("0.45"), 5);
    CHECK_MONEY(ba.heldCreditsNew, usd("0.4"), 2);
    CHECK_MONEY(ba.creditsNewUsed, usd("0.15"), 2);
    CHECK_MONEY(ba.credits, usd("0.3"), 2);
    CHECK_MONEY(ba.creditsUsed, usd("0.2"), 1);
    CHECK(ba.tokensUserNew == 2 * 190);
    CHECK(ba.totalInputTokens == 3 * 150);
    CHECK(ba.totalOutputTokens == 3 * 40);
    Balance bb = balanceOf(*l, b);
    CHECK_MONEY(bb.credits, usd("0"), 3);
    CHECK_MONEY(bb.refCredits, usd("0.05"), 3);
    CHECK(bb.heldCredits.nanos == 0);
    CHECK_MONEY(bb.heldRefCredits, usd("0.15"), 2);
    CHECK_MONEY(bb.creditsUsed, usd("0.3"), 1);
    CHECK(bb.creditsNew.nanos == 0);
    CHECK(bb.creditsNewUsed.nanos == 0);

    std::map<std::string, LogEntry> logs;
    for (const std::string& user : {a, b})
        for (LogEntry& e : logOf(*l, user))
            logs[e.requestId] = e;
    REQUIRE(logs.size() == 5);
    CHECK_MONEY(logs[req + "-1"].cost, usd("0.1"), 1);
    CHECK_MONEY(logs[req + "-2"].cost, usd("0.3"), 1);
    CHECK_MONEY(logs[req + "-3"].cost, usd("0.2"), 1);
    CHECK(logs[req + "-5"].cost.nanos == 0);
    CHECK_MONEY(logs[req + "-5"].shortfall, usd("0.1"), 1);
    CHECK_MONEY(logs[req + "-6"].cost, usd("0.05"), 1);
    CHECK(logs[req + "-2"].userId == b);
    CHECK(logs[req + "-2"].creditType == "ohmygpt");

    // Across batches: settled ids stay settled, a new one is applied.
    std::vector<Charge> second{
        batch[1], onSlice(charge(req + "-7", a, Pool::CreditsNew, "0.05"), sa, "0.05"), batch[0]};
    out = l->settleBatch(second);
    REQUIRE(out.size() == 3);
    CHECK(out[0].status == SettleStatus::AlreadySettled);
    CHECK(out[1].status == SettleStatus::Settled);
    CHECK_MONEY(out[1].charged, usd("0.05"), 1);
    CHECK(out[2].status == SettleStatus::AlreadySettled);
    CHECK(l->settleBatch({}).empty());

    ba = balanceOf(*l, a);
    CHECK_MONEY(ba.heldCreditsNew, usd("0.35"), 3);
    CHECK_MONEY(ba.creditsNew, usd("0.45"), 5);
    CHECK_MONEY(ba.creditsNewUsed, usd("0.2"), 3);
    checkConserved(ba, "1.0", "0.5", 10);
    checkConserved(balanceOf(*l, b), "0", "0.5", 10);
    CHECK(logOf(*l, a).size() == 4);
    CHECK(logOf(*l, b).size() == 2);
}

TEST_CASE("settleBatch stores what settling the same charges one by one stores") {
    // Twin users with the same balances and slices: one's charges settled one
    // at a time, the other's in one batch (many on one slice, a slice running
    // dry, a missing slice, a repeated id, a request's own hold in between).
    auto l = openTestLedger();
    std::string users[2] = {makeUser(*l, "twin-one"), makeUser(*l, "twin-batch")};
    std::string slices[2], req[2];
    for (int t = 0; t < 2; ++t) {
        give(*l, users[t], BalanceField::CreditsNew, "2.0");
        give(*l, users[t], BalanceField::Credits, "0.3");
        give(*l, users[t], BalanceField::RefCredits, "0.4");
        slices[t] = uniqueName("twin-slice");
        req[t] = uniqueName("twin-req");
        grant(*l, sliceRequest(slices[t], users[t], Pool::CreditsNew, "0.6"), "0.6");
        grant(*l, sliceRequest(slices[t] + "-c", users[t], Pool::Credits, "0.5"), "0.5");
        REQUIRE(l->reserve(hold(req[t] + "-own", users[t], Pool::CreditsNew, "0.2")) ==
                ReserveStatus::Reserved);
    }
    auto charges = [&](int t) {
        std::vector<Charge> out;
        const char* costs[] = {"0.013", "0.07", "0.0009", "0.11", "0.05"};
        for (int i = 0; i < 30; ++i) {
            const char* cost = costs[i % 5];
            Charge c = onSlice(charge(req[t] + "-" + std::to_string(i), users[t],
                                      i % 3 == 2 ? Pool::Credits : Pool::CreditsNew, cost),
                               i % 3 == 2 ? slices[t] + "-c" : slices[t],
                               i % 4 == 3 ? "0.01" : cost); // some share less than they cost
            c.usage = Usage{100 + i, 20 + i, 3, 4, false};
            out.push_back(c);
            if (i == 10)
                out.push_back(charge(req[t] + "-own", users[t], Pool::CreditsNew, "0.15"));
            if (i == 12)
                out.push_back(onSlice(charge(req[t] + "-x", users[t], Pool::CreditsNew, "0.02"),
                                      uniqueName("no-such-slice"), "0.02"));
            if (i == 20)
                out.push_back(out[5]); // the same id again
        }
        return out;
    };
    std::vector<SettleOutcome> one;
    for (const Charge& c : charges(0))
        one.push_back(l->settle(c));
    std::vector<Charge> batch = charges(1);
    std::vector<SettleOutcome> all = l->settleBatch(batch);
    REQUIRE(all.size() == one.size());
    const std::int64_t ops = static_cast<std::int64_t>(one.size());
    for (std::size_t i = 0; i < one.size(); ++i) {
        INFO("charge ", i);
        CHECK(all[i].status == one[i].status);
        CHECK_MONEY(all[i].charged, one[i].charged, 1);
        CHECK_MONEY(all[i].shortfall, one[i].shortfall, 1);
    }
    Balance a = balanceOf(*l, users[0]), b = balanceOf(*l, users[1]);
    CHECK_MONEY(b.credits, a.credits, ops);
    CHECK_MONEY(b.refCredits, a.refCredits, ops);
    CHECK_MONEY(b.creditsNew, a.creditsNew, ops);
    CHECK_MONEY(b.creditsUsed, a.creditsUsed, ops);
    CHECK_MONEY(b.creditsNewUsed, a.creditsNewUsed, ops);
    CHECK_MONEY(b.heldCredits, a.heldCredits, ops);
    CHECK_MONEY(b.heldRefCredits, a.heldRefCredits, ops);
    CHECK_MONEY(b.heldCreditsNew, a.heldCreditsNew, ops);
    CHECK(b.tokensUserNew == a.tokensUserNew);
    CHECK(b.totalInputTokens == a.totalInputTokens);
    CHECK(b.totalOutputTokens == a.totalOutputTokens);
    CHECK(a.heldCreditsNew.nanos < usd("0.6").nanos); // the slices were drawn on
    CHECK(a.creditsNewUsed.nanos > 0);
    checkConserved(b, "2.0", "0.7", ops);
    auto logsA = logOf(*l, users[0]), logsB = logOf(*l, users[1]);
    REQUIRE(logsA.size() == logsB.size());
    CHECK(logsA.size() == 32); // 30 + the own hold's + the missing slice's; the repeat is not
    Money sumA{0}, sumB{0};
    for (std::size_t i = 0; i < logsA.size(); ++i) {
        sumA += logsA[i].cost;
        sumB += logsB[i].cost;
    }
    CHECK_MONEY(sumB, sumA, ops);
}

TEST_CASE("8 threads draw many small charges on one slice whose shares sum to it") {
    auto l = openTestLedger();
    std::string user = makeUser(*l, "slice-threads");
    give(*l, user, BalanceField::CreditsNew, "10.0");
    std::string id = uniqueName("slice");
    std::string req = uniqueName("req");
    grant(*l, sliceRequest(id, user, Pool::CreditsNew, "8.0"), "8.0");

    constexpr int kThreads = 8;
    constexpr int kPerThread = 100; // 800 × 0.01 = the slice
    constexpr std::size_t kChunk = 10;
    std::atomic<int> notSettled{0}, broken{0}, running{kThreads};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            std::vector<Charge> chunk;
            for (int i = 0; i < kPerThread; ++i) {
                std::string rid = req + "-" + std::to_string(t) + "-" + std::to_string(i);
                Charge c = onSlice(charge(rid, user, Pool::CreditsNew, "0.01"), id, "0.01");
                if (t % 2 == 0) { // half one by one, half in batches
                    notSettled += l->settle(c).status != SettleStatus::Settled;
                    continue;
                }
                chunk.push_back(c);
                if (chunk.size() < kChunk)
                    continue;
                for (const SettleOutcome& o : l->settleBatch(chunk))
                    notSettled += o.status != SettleStatus::Settled;
                chunk.clear();
            }
            --running;
        });
    }
    // Meanwhile: settled + held never exceeds what was credited, and nothing is lost.
    const Money credited = usd("10.0");
    int looks = 0;
    while (running > 0 || looks == 0) {
        auto b = l->balance(user);
        if (!b || b->creditsNewUsed + b->heldCreditsNew > credited + Money{slack(800)} ||
            std::llabs((b->creditsNew + b->heldCreditsNew + b->creditsNewUsed - credited).nanos) >
                slack(800))
            ++broken;
        ++looks;
    }
    for (auto& t : threads)
        t.join();
    CHECK(notSettled == 0);
    CHECK(broken == 0);
    CHECK(looks > 0);

    Balance end = balanceOf(*l, user);
    CHECK_MONEY(end.heldCreditsNew, usd("0"), 800);
    CHECK_MONEY(end.creditsNew, usd("2.0"), 800);
    CHECK_MONEY(end.creditsNewUsed, usd("8.0"), 800);
    auto log = logOf(*l, user, 10'000);
    CHECK(log.size() == kThreads * kPerThread);
    std::map<std::string, int> seen;
    Money logged, shortfall;
    for (const LogEntry& e : log) {
        ++seen[e.requestId];
        logged += e.cost;
        shortfall += e.shortfall;
    }
    CHECK(seen.size() == log.size());
    CHECK_MONEY(logged, usd("10.0") - (end.creditsNew + end.heldCreditsNew), 800);
    CHECK_MONEY(logged, usd("8.0"), 800);
    CHECK(shortfall.nanos == 0);
    REQUIRE(l->renewHold(id, nowMs() + kHourMs)); // at zero, still there
    REQUIRE(l->release(id));
    checkConserved(balanceOf(*l, user), "10.0", "0", 800);
}
