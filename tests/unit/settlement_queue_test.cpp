// SettlementQueue (proxy/settlement_queue.cpp): batches, the pace a busy ledger sets, the journal
// file.
#include <algorithm>
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "proxy/settlement_queue.hpp"

using namespace trollproxy;
using namespace std::chrono_literals;

namespace {

/// Steady time that moves only when the ledger says a batch took it.
class BatchClock final : public Clock {
public:
    std::int64_t wallMs() const override { return 0; }
    std::int64_t steadyNs() const override { return ns_.load(); }
    void advance(std::chrono::nanoseconds d) { ns_ += d.count(); }

private:
    std::atomic<std::int64_t> ns_{0};
};

/// A ledger whose settleBatch can be held shut, or report itself down.
class GatedLedger final : public CreditLedger {
public:
    AuthOutcome authenticate(std::string_view) override { return {}; }
    ReserveStatus reserve(const HoldRequest&) override { return ReserveStatus::LedgerUnavailable; }
    SettleOutcome settle(const Charge& c) override { return settleBatch({&c, 1}).front(); }
    SliceGrant reserveSlice(const SliceRequest&) override { return {}; }
    std::vector<SettleOutcome> settleBatch(std::span<const Charge> charges) override {
        std::unique_lock lock(mutex_);
        ++batches_;
        opened_.wait(lock, [this] { return open_; });
        clock_.advance(took_);
        SettleOutcome o;
        o.status = down_ ? SettleStatus::LedgerUnavailable : SettleStatus::Settled;
        largest_ = std::max(largest_, charges.size());
        std::vector<SettleOutcome> out(charges.size(), o);
        if (partly_ && charges.size() > 1) {
            // Takes the charges at even places only, then holds the next batch.
            for (std::size_t i = 1; i < out.size(); i += 2)
                out[i].status = SettleStatus::LedgerUnavailable;
            ++partial_;
            open_ = false;
        }
        for (const SettleOutcome& r : out)
            settled_ += r.status == SettleStatus::Settled;
        return out;
    }
    Result<void> release(std::string_view) override { return {}; }
    Result<void> renewHold(std::string_view, std::int64_t) override { return {}; }
    Result<std::int64_t> sweepExpiredHolds(std::int64_t) override { return std::int64_t{0}; }
    Result<std::int64_t> releaseHolds(std::string_view) override { return std::int64_t{0}; }
    Result<std::string> responseOwner(std::string_view) override { return std::string(); }
    Result<void> recordRequest(const LogEntry&) override { return {}; }
    bool ping() override { return !down_; }

    void setOpen(bool open) {
        std::lock_guard lock(mutex_);
        open_ = open;
        opened_.notify_all();
    }
    /// A batch of two or more is taken in part, and the ledger shuts after it.
    void setPartly(bool partly) {
        std::lock_guard lock(mutex_);
        partly_ = partly;
    }
    std::int64_t partialBatches() {
        std::lock_guard lock(mutex_);
        return partial_;
    }
    /// How long each batch takes on the queue's clock.
    void setBatchTime(std::chrono::milliseconds took) {
        std::lock_guard lock(mutex_);
        took_ = took;
    }
    const Clock& clock() const { return clock_; }
    void setDown(bool down) {
        std::lock_guard lock(mutex_);
        down_ = down;
    }
    std::int64_t settled() {
        std::lock_guard lock(mutex_);
        return settled_;
    }
    std::int64_t batches() {
        std::lock_guard lock(mutex_);
        return batches_;
    }
    std::size_t largestBatch() {
        std::lock_guard lock(mutex_);
        return largest_;
    }

private:
    std::mutex mutex_;
    std::condition_variable opened_;
    bool open_ = true;
    bool down_ = false;
    std::int64_t settled_ = 0;
    std::int64_t batches_ = 0;
    std::size_t largest_ = 0;
    bool partly_ = false;
    std::int64_t partial_ = 0;
    BatchClock clock_;
    std::chrono::milliseconds took_{0};
};

Charge chargeFor(int i) {
    Charge c;
    c.requestId = "req_" + std::to_string(i);
    c.userId = "u1";
    c.keyId = "k1";
    c.model = "m";
    c.cost = Money::fromNanos(1000);
    return c;
}

struct Fixture {
    std::string path;
    GatedLedger ledger;
    internal::Metrics metrics;
    const Clock* clock = &ledger.clock();

    Fixture() {
        path = (std::filesystem::temp_directory_path() /
                ("tp-sq-" + std::to_string(::getpid()) + ".journal"))
                   .string();
        std::filesystem::remove(path);
    }
    ~Fixture() { std::filesystem::remove(path); }

    bool waitSettled(std::int64_t n) {
        for (int i = 0; i < 2000 && ledger.settled() < n; ++i)
            std::this_thread::sleep_for(5ms);
        return ledger.settled() >= n;
    }
};

constexpr int kPace = 2048; // SettlementQueue::kPaceQueued

} // namespace

TEST_CASE("charges submitted together are settled in few batches, each charge once") {
    Fixture f;
    internal::SettlementQueue q(f.path, f.ledger, f.metrics, *f.clock);
    q.start();
    f.ledger.setOpen(false); // the first batch waits in the ledger while the rest queue
    for (int i = 0; i < 600; ++i)
        REQUIRE(q.submit(chargeFor(i), false));
    f.ledger.setOpen(true);
    REQUIRE(f.waitSettled(600));
    CHECK(f.ledger.settled() == 600);
    CHECK(f.ledger.batches() <= 5); // 1 + ceil(599 / 256) when nothing lingers apart
    CHECK(q.depth() == 0);
    q.stop();
}

TEST_CASE("batches grow to 1024 charges behind a slow ledger, not beyond; a fast one keeps 256") {
    Fixture f;
    bool slow = false;
    SUBCASE("each batch takes the ledger 25 ms") {
        slow = true;
    }
    SUBCASE("each batch takes the ledger 5 ms") {
        slow = false;
    }
    f.ledger.setBatchTime(slow ? 25ms : 5ms);
    internal::SettlementQueue q(f.path, f.ledger, f.metrics, *f.clock);
    q.start();
    f.ledger.setOpen(false); // the first batch waits in the ledger while 1,999 queue
    for (int i = 0; i < 2000; ++i)
        REQUIRE(q.submit(chargeFor(i), false));
    f.ledger.setOpen(true);
    REQUIRE(f.waitSettled(2000));
    CHECK(f.ledger.settled() == 2000);
    if (slow) {
        CHECK(f.ledger.largestBatch() == 1024);
        CHECK(f.ledger.batches() <= 3); // 1 + ceil(1999 / 1024)
    } else {
        CHECK(f.ledger.largestBatch() == 256);
    }
    CHECK(q.depth() == 0);
    q.stop();
}

TEST_CASE("past the pace mark a submit waits for the flusher while the ledger answers") {
    Fixture f;
    internal::SettlementQueue q(f.path, f.ledger, f.metrics, *f.clock);
    q.start();
    f.ledger.setOpen(false);
    for (int i = 0; i < kPace + 1; ++i)
        REQUIRE(q.submit(chargeFor(i), false));
    // The flusher took one batch into the ledger, which holds it: the rest
    // still count, and the next submit waits.
    auto next = std::async(std::launch::async, [&] { return q.submit(chargeFor(-1), false); });
    CHECK(next.wait_for(100ms) == std::future_status::timeout);
    f.ledger.setOpen(true);
    REQUIRE(next.wait_for(30s) == std::future_status::ready);
    CHECK(next.get());
    REQUIRE(f.waitSettled(kPace + 2));
    q.stop();
}

TEST_CASE("a ledger that takes part of a batch still sets the pace") {
    Fixture f;
    internal::SettlementQueue q(f.path, f.ledger, f.metrics, *f.clock);
    q.start();
    f.ledger.setPartly(true);
    f.ledger.setOpen(false);
    for (int i = 0; i < 8; ++i)
        REQUIRE(q.submit(chargeFor(i), false));
    f.ledger.setOpen(true);
    // A batch is taken in part; the flusher holds the next one in the ledger.
    for (int i = 0; i < 2000 && (f.ledger.partialBatches() == 0 || f.ledger.batches() < 2); ++i)
        std::this_thread::sleep_for(5ms);
    REQUIRE(f.ledger.partialBatches() == 1);
    for (int i = 8; i < kPace + 8; ++i)
        REQUIRE(q.submit(chargeFor(i), false));
    auto next = std::async(std::launch::async, [&] { return q.submit(chargeFor(-1), false); });
    CHECK(next.wait_for(100ms) == std::future_status::timeout);
    f.ledger.setPartly(false);
    f.ledger.setOpen(true);
    REQUIRE(next.wait_for(30s) == std::future_status::ready);
    CHECK(next.get());
    REQUIRE(f.waitSettled(kPace + 9));
    CHECK(q.depth() == 0);
    q.stop();
}

TEST_CASE("while the ledger is down, submits past the pace mark do not wait") {
    Fixture f;
    f.ledger.setDown(true);
    internal::SettlementQueue q(f.path, f.ledger, f.metrics, *f.clock);
    q.start();
    REQUIRE(q.submit(chargeFor(0), false));
    // The first batch fails: from then on nobody waits for the flusher.
    for (int i = 0; i < 400 && f.ledger.batches() == 0; ++i)
        std::this_thread::sleep_for(5ms);
    REQUIRE(f.ledger.batches() > 0);
    std::this_thread::sleep_for(50ms);
    const auto start = std::chrono::steady_clock::now();
    for (int i = 1; i < kPace + 200; ++i)
        REQUIRE(q.submit(chargeFor(i), false));
    // Waiting 500 ms per submit past the mark would take over 100 s.
    CHECK(std::chrono::steady_clock::now() - start < 60s);
    CHECK(q.depth() == kPace + 200);
    f.ledger.setDown(false);
    REQUIRE(f.waitSettled(kPace + 200));
    q.stop();
}

TEST_CASE("the journal keeps settled lines until a thousand have gathered, then is emptied") {
    Fixture f;
    internal::SettlementQueue q(f.path, f.ledger, f.metrics, *f.clock);
    q.start();
    for (int i = 0; i < 10; ++i)
        REQUIRE(q.submit(chargeFor(i), false));
    REQUIRE(f.waitSettled(10));
    // Settled, still in the file: a crash now replays them, which the ledger
    // ignores (idempotent by request id); no truncate ran per batch.
    CHECK(std::filesystem::file_size(f.path) > 0);
    for (int i = 10; i < 1100; ++i)
        REQUIRE(q.submit(chargeFor(i), false));
    REQUIRE(f.waitSettled(1100));
    q.stop();
    CHECK(!std::filesystem::exists(f.path)); // removed at a clean stop
}
