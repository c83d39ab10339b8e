// SliceBook (proxy/slice_book.cpp) against a real SQLite ledger: slices that go back while a
// newer slice serves the same user.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <string>

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
