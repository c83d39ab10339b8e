// SliceBook (proxy/slice_book.cpp) against a real SQLite ledger: slices that go back while a
// newer slice serves the same user.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>

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

// The real ledger, counting slice refills.
class CountingLedger final : public CreditLedger {
public:
    explicit CountingLedger(std::unique_ptr<CreditLedger> real) : real_(std::move(real)) {}
    AuthOutcome authenticate(std::string_view k) override { return real_->authenticate(k); }
    ReserveStatus reserve(const HoldRequest& h) override { return real_->reserve(h); }
    SliceGrant reserveSlice(const SliceRequest& r) override {
        ++refills;
        return real_->reserveSlice(r);
    }
    SettleOutcome settle(const Charge& c) override { return real_->settle(c); }
    Result<void> release(std::string_view id) override { return real_->release(id); }
    Result<void> renewHold(std::string_view id, std::int64_t at) override {
        return real_->renewHold(id, at);
    }
    Result<std::int64_t> sweepExpiredHolds(std::int64_t now) override {
        return real_->sweepExpiredHolds(now);
    }
    Result<std::int64_t> releaseHolds(std::string_view prefix) override {
        return real_->releaseHolds(prefix);
    }
    Result<std::string> responseOwner(std::string_view id) override {
        return real_->responseOwner(id);
    }
    Result<void> recordRequest(const LogEntry& e) override { return real_->recordRequest(e); }
    bool ping() override { return real_->ping(); }

    std::atomic<int> refills{0};

private:
    std::unique_ptr<CreditLedger> real_;
};

bool waitUntil(const std::function<bool()>& done) {
    for (int i = 0; i < 500 && !done(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return done();
}

} // namespace

TEST_CASE("a retired slice goes back when its last charge settles after a newer slice took its "
          "place") {
    char tmpl[] = "/tmp/trollproxy-slicebook-XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    const std::string uri = "sqlite:" + dir + "/ledger.db";
    auto admin = std::move(*openLedgerAdmin(uri));
    REQUIRE(admin->addUser("u"));
    REQUIRE(admin->credit("u", BalanceField::CreditsNew, usd("0.5")));
    auto ledger = std::move(*openLedger(uri));
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
    std::filesystem::remove_all(dir);
}

TEST_CASE("the refiller does not ask again for every claim once the balance refused it") {
    char tmpl[] = "/tmp/trollproxy-slicebook-XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    const std::string uri = "sqlite:" + dir + "/ledger.db";
    auto admin = std::move(*openLedgerAdmin(uri));
    REQUIRE(admin->addUser("u"));
    REQUIRE(admin->credit("u", BalanceField::CreditsNew, usd("0.3")));
    CountingLedger ledger(std::move(*openLedger(uri)));
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
    std::filesystem::remove_all(dir);
}

TEST_CASE("the book forgets users whose slices went back") {
    char tmpl[] = "/tmp/trollproxy-slicebook-XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    const std::string uri = "sqlite:" + dir + "/ledger.db";
    auto admin = std::move(*openLedgerAdmin(uri));
    auto ledger = std::move(*openLedger(uri));
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
    std::filesystem::remove_all(dir);
}
