// SliceBook (proxy/slice_book.cpp) against a real SQLite ledger: a slice going back while a
// newer one serves its user, the refiller's pause after a refusal, idle users forgotten.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>

#include "../support/delegating_ledger.hpp"
#include "proxy/slice_book.hpp"
#include "trollproxy/ledger_admin.hpp"

using namespace trollproxy;
using internal::ClaimStatus;
using internal::SliceClaim;

namespace {

class StoppedClock final : public Clock {
public:
    std::int64_t wallMs() const override { return 1'800'000'000'000 + ms_.load(); }
    std::int64_t steadyNs() const override { return ms_.load() * 1'000'000; }
    void advance(std::int64_t ms) { ms_ += ms; }

private:
    std::atomic<std::int64_t> ms_{1'000'000};
};

Money usd(const char* text) {
    return *Money::parse(text);
}

// A SQLite ledger in a fresh directory, removed at the end.
struct LedgerFile {
    std::string dir;
    std::string uri;
    std::unique_ptr<LedgerAdmin> admin;
    LedgerFile() {
        char tmpl[] = "/tmp/trollproxy-slicebook-XXXXXX";
        dir = mkdtemp(tmpl);
        uri = "sqlite:" + dir + "/ledger.db";
        admin = std::move(*openLedgerAdmin(uri));
    }
    ~LedgerFile() {
        admin.reset();
        std::filesystem::remove_all(dir);
    }
    std::unique_ptr<CreditLedger> open() const { return std::move(*openLedger(uri)); }
};

// The real ledger, counting slice refills.
class CountingLedger final : public support::DelegatingLedger {
public:
    using DelegatingLedger::DelegatingLedger;
    SliceGrant reserveSlice(const SliceRequest& r) override {
        ++refills;
        return DelegatingLedger::reserveSlice(r);
    }

    std::atomic<int> refills{0};
};

bool waitUntil(const std::function<bool()>& done) {
    for (int i = 0; i < 500 && !done(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return done();
}

} // namespace

TEST_CASE("a retired slice goes back when its last charge settles after a newer slice took its "
          "place") {
    LedgerFile db;
    auto& admin = db.admin;
    REQUIRE(admin->addUser("u"));
    REQUIRE(admin->credit("u", BalanceField::CreditsNew, usd("0.5")));
    auto ledger = db.open();
    internal::Metrics metrics;
    StoppedClock clock;
    {
        internal::SliceBook book(*ledger, metrics, clock, "req_test_");
        const internal::SlicePolicy policy{usd("0.5"), 500, 10'000, 900'000};

        // The first slice: half the free 0.5 USD. A charge of 0.05 draws on it
        // and waits in the journal.
        SliceClaim first;
        REQUIRE(book.claim("u", Pool::CreditsNew, usd("0.1"), policy, first) ==
                ClaimStatus::Claimed);
        const std::string firstId = first.sliceId();
        CHECK(admin->balance("u")->heldCreditsNew == usd("0.25"));
        book.finish(first, usd("0.05"), true);

        // A request the slice and the balance cannot cover: the slice retires,
        // but its queued charge keeps it.
        SliceClaim big;
        CHECK(book.claim("u", Pool::CreditsNew, usd("0.5"), policy, big) == ClaimStatus::NoSlice);

        // A second later a new slice serves the user; only the book still knows the first.
        clock.advance(1'100);
        SliceClaim next;
        REQUIRE(book.claim("u", Pool::CreditsNew, usd("0.01"), policy, next) ==
                ClaimStatus::Claimed);
        CHECK(next.sliceId() != firstId);

        // Its charge settled: the first slice goes back, the book forgets it.
        book.settled(firstId);
        CHECK(book.outstanding() == 1);
        CHECK(admin->balance("u")->heldCreditsNew == usd("0.04")); // the new slice only
        book.finish(next, Money{}, false);
        book.stop();
    }
    // The charge was never applied here (the test stands in for the flusher):
    // every nano-dollar is back.
    CHECK(admin->balance("u")->heldCreditsNew == Money{});
    CHECK(admin->balance("u")->creditsNew == usd("0.5"));
}

TEST_CASE("the refiller does not ask again for every claim once the balance refused it") {
    LedgerFile db;
    auto& admin = db.admin;
    REQUIRE(admin->addUser("u"));
    REQUIRE(admin->credit("u", BalanceField::CreditsNew, usd("0.3")));
    CountingLedger ledger(db.open());
    internal::Metrics metrics;
    StoppedClock clock;
    {
        internal::SliceBook book(ledger, metrics, clock, "req_test_");
        const internal::SlicePolicy policy{usd("0.3"), 1000, 10'000, 900'000};
        book.start(policy);
        // The whole balance goes into the slice: three requests of 0.1.
        SliceClaim c[4];
        for (int i = 0; i < 2; ++i)
            REQUIRE(book.claim("u", Pool::CreditsNew, usd("0.1"), policy, c[i]) ==
                    ClaimStatus::Claimed);
        CHECK(ledger.refills == 1);
        REQUIRE(book.claim("u", Pool::CreditsNew, usd("0.1"), policy, c[2]) ==
                ClaimStatus::Claimed);
        // The third took it below its low mark: the refiller asks (the slice's
        // size, then just what is missing), and the balance is empty.
        CHECK(waitUntil([&] { return ledger.refills == 3; }));
        // The next claims below the mark do not ask again within the second.
        for (int round = 0; round < 3; ++round) {
            book.finish(c[2], Money{}, false);
            REQUIRE(book.claim("u", Pool::CreditsNew, usd("0.1"), policy, c[2]) ==
                    ClaimStatus::Claimed);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        CHECK(ledger.refills == 3);
        // A second later it tries again.
        clock.advance(1'100);
        book.finish(c[2], Money{}, false);
        REQUIRE(book.claim("u", Pool::CreditsNew, usd("0.1"), policy, c[2]) ==
                ClaimStatus::Claimed);
        CHECK(waitUntil([&] { return ledger.refills == 5; }));
        for (int i = 0; i < 3; ++i)
            book.finish(c[i], Money{}, false);
        book.stop();
    }
    CHECK(admin->balance("u")->heldCreditsNew == Money{});
    CHECK(admin->balance("u")->creditsNew == usd("0.3"));
}

TEST_CASE("the book forgets users whose slices went back") {
    LedgerFile db;
    auto& admin = db.admin;
    auto ledger = db.open();
    internal::Metrics metrics;
    StoppedClock clock;
    internal::SliceBook book(*ledger, metrics, clock, "req_test_");
    const internal::SlicePolicy policy{usd("1"), 500, 10'000, 900'000};
    for (const char* user : {"a", "b", "c"}) {
        REQUIRE(admin->addUser(user));
        REQUIRE(admin->credit(user, BalanceField::CreditsNew, usd("1")));
        SliceClaim c;
        REQUIRE(book.claim(user, Pool::CreditsNew, usd("0.01"), policy, c) == ClaimStatus::Claimed);
        book.finish(c, usd("0.005"), false);
    }
    CHECK(book.owners() == 3);
    book.tick(policy);
    CHECK(book.owners() == 3); // in use
    clock.advance(5'000);
    SliceClaim busy; // "c" is served again: its slice stays
    REQUIRE(book.claim("c", Pool::CreditsNew, usd("0.01"), policy, busy) == ClaimStatus::Claimed);
    clock.advance(6'000); // a and b idle past slice_idle_seconds
    book.tick(policy);
    CHECK(book.outstanding() == 1);
    CHECK(book.owners() == 1);
    CHECK(admin->balance("a")->heldCreditsNew == Money{});
    book.finish(busy, Money{}, false);
    book.stop();
    CHECK(admin->balance("c")->heldCreditsNew == Money{});
}
