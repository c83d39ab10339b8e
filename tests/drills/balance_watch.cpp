// Budget slice drills' shared parts: the ledgers they run on, the settings, waiting for slices to
// go back, and the balance watch that checks the invariant while they run.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "../support/users.hpp"
#include "drill.hpp"

using namespace trollproxy;

namespace drills {

std::vector<LedgerTarget> ledgerTargets(const Options& o) {
    std::vector<LedgerTarget> out{{"SQLite", "", false}};
    if (!o.mongoUri.empty()) {
        static int db = 0; // a fresh database per run: CongoDB keeps them while it lives
        out.push_back(
            {"MongoDB protocol (CongoDB)", o.mongoUri + "/slices" + std::to_string(++db), true});
    }
    return out;
}

std::string sliceSettings(const std::string& maxUsd, double idleSeconds,
                          const std::string& fraction) {
    char idle[32];
    std::snprintf(idle, sizeof idle, "%g", idleSeconds);
    return std::string(R"("settlement": "journal_first", "slice_max_usd": )") + maxUsd +
           R"(, "slice_fraction": )" + fraction + R"(, "slice_idle_seconds": )" + idle;
}

bool journalsSettled(DrillStack& s) {
    for (int i = 0; i < s.instances(); ++i) {
        if (s.settings.settlement != Settlement::JournalFirst) {
            // The fail-open journal is removed once replayed.
            if (std::ifstream(s.journalPath(i)).good())
                return false;
        } else if (s.proxyAt(i).running() &&
                   (s.metric("trollproxy_journal_pending", i) > 0 ||
                    s.metric("trollproxy_settlement_queue_depth", i) > 0)) {
            // The journal-first file keeps settled lines until it is compacted.
            return false;
        }
    }
    return true;
}

bool waitReleased(DrillStack& s, const std::string& user, Money credited, double seconds,
                  double* took) {
    const double t0 = now();
    bool done = false;
    while (!done) {
        Balance b = s.balance(user);
        Money logged;
        for (const auto& [id, e] : s.logs(user))
            logged += e.cost;
        done = b.heldCredits.nanos == 0 && b.heldRefCredits.nanos == 0 &&
               b.heldCreditsNew.nanos == 0 && credited - b.creditsNew == logged &&
               journalsSettled(s);
        if (done || now() - t0 > seconds)
            break;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (took)
        *took = now() - t0;
    return done;
}

BalanceWatch::BalanceWatch(DrillStack& s, const std::string& user, Money credited)
    : credited_(credited.nanos) {
    // Its own handle: the drill's is used from the drill's thread.
    thread_ = std::thread([this, uri = s.ledgerUri, name = s.ledgerName(user)] { run(uri, name); });
}

BalanceWatch::~BalanceWatch() {
    stop_ = true;
    if (thread_.joinable())
        thread_.join();
}

void BalanceWatch::credited(Money total) {
    credited_ = total.nanos;
}

void BalanceWatch::run(std::string uri, std::string name) {
    LedgerOptions lo;
    lo.timeoutMs = 1000;
    auto admin = openLedgerAdmin(uri, lo);
    while (!stop_) {
        // Read the bound first: a top-up raises it before it credits.
        const std::int64_t bound = credited_;
        auto b = admin ? (*admin)->balance(name) : Result<Balance>(admin.error());
        if (!b) {
            ++unreadable_;
        } else {
            ++samples_;
            const Balance& x = *b;
            const bool negative = x.credits.nanos < 0 || x.creditsUsed.nanos < 0 ||
                                  x.refCredits.nanos < 0 || x.creditsNew.nanos < 0 ||
                                  x.creditsNewUsed.nanos < 0 || x.heldCredits.nanos < 0 ||
                                  x.heldRefCredits.nanos < 0 || x.heldCreditsNew.nanos < 0;
            const bool over = x.creditsNewUsed.nanos + x.heldCreditsNew.nanos > bound;
            negative_ += negative;
            over_ += over;
            if (x.heldCreditsNew.nanos > maxHeld_)
                maxHeld_ = x.heldCreditsNew.nanos;
            if (negative || over) {
                std::lock_guard lock(mutex_);
                if (firstBad_.empty())
                    firstBad_ = "creditsNew " + x.creditsNew.toString() + ", creditsNewUsed " +
                                x.creditsNewUsed.toString() + ", heldCreditsNew " +
                                x.heldCreditsNew.toString() + ", credited " +
                                Money{bound}.toString();
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

void BalanceWatch::finish(Verdict& v) {
    stop_ = true;
    if (thread_.joinable())
        thread_.join();
    std::printf("  balance watch: %d samples (%d unreadable), most held at once %s\n",
                samples_.load(), unreadable_.load(), money(maxHeld()).c_str());
    if (!firstBad_.empty())
        std::printf("  first bad sample: %s\n", firstBad_.c_str());
    v.check(samples_ > 0 && negative_ == 0,
            "no balance field below zero at any of the " + std::to_string(samples_) + " samples");
    v.check(over_ == 0, "settled charges + outstanding holds (slices included) <= credits added, "
                        "at every sample (" +
                            std::to_string(over_) + " over)");
}

} // namespace drills
