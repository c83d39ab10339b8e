// A helper process for the ledger tests: charges in a loop, printing each
// acknowledged request id, so a test can run several at once or kill -9 one.
//   ledger_worker [--crash-at POINT] MODE ...
//   ledger_worker settle URI USER COUNT PREFIX      reserve+settle COUNT charges of 0.01
//   ledger_worker journal URI USER COUNT PREFIX JOURNAL   append COUNT charges, then replay
//   ledger_worker replay URI JOURNAL
// --crash-at POINT: exit 86 at once when the ledger reaches the test point POINT
// (see src/ledger/test_hooks.hpp), e.g. mongo-crash-after-charge.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "ledger/test_hooks.hpp"
#include "trollproxy/journal.hpp"
#include "trollproxy/ledger.hpp"

using namespace trollproxy;

namespace {

std::string crashPoint;

void crashAt(std::string_view point) {
    if (point == crashPoint)
        std::_Exit(86); // like kill -9 there: no destructors, nothing flushed
}

Charge makeCharge(const std::string& user, const std::string& id) {
    Charge c;
    c.requestId = id;
    c.userId = user;
    c.keyId = "k";
    c.model = "m";
    c.pool = Pool::CreditsNew;
    c.usage = Usage{10, 0, 0, 5};
    c.cost = Money{10'000'000}; // 0.01
    c.createdAtMs = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
    return c;
}

} // namespace

int main(int argc, char** argv) {
    if (argc > 2 && std::string_view(argv[1]) == "--crash-at") {
        crashPoint = argv[2];
        internal::setLedgerTestHook(crashAt);
        argc -= 2;
        argv += 2;
    }
    if (argc < 4)
        return 2;
    std::string mode = argv[1];
    auto opened = openLedger(argv[2]);
    if (!opened) {
        std::fprintf(stderr, "%s\n", opened.error().message.c_str());
        return 1;
    }
    CreditLedger& ledger = **opened;
    if (mode == "replay") {
        ChargeJournal journal(argv[3]);
        auto r = journal.replay(ledger);
        if (!r)
            return 1;
        std::printf("applied %lld already %lld pending %lld\n", static_cast<long long>(r->applied),
                    static_cast<long long>(r->alreadySettled), static_cast<long long>(r->pending));
        return r->pending ? 1 : 0;
    }
    if (argc < 6)
        return 2;
    std::string user = argv[3];
    int count = std::atoi(argv[4]);
    std::string prefix = argv[5];
    if (mode == "settle") {
        for (int i = 0; i < count; ++i) {
            std::string id = prefix + std::to_string(i);
            HoldRequest h{id, user, Pool::CreditsNew, Money{10'000'000},
                          makeCharge(user, id).createdAtMs + 60'000};
            ReserveStatus r = ledger.reserve(h);
            if (r == ReserveStatus::InsufficientCredits) {
                std::printf("refused %s\n", id.c_str());
                continue;
            }
            if (r != ReserveStatus::Reserved)
                return 1;
            if (ledger.settle(makeCharge(user, id)).status != SettleStatus::Settled)
                return 1;
            std::printf("settled %s\n", id.c_str());
            std::fflush(stdout);
        }
        return 0;
    }
    if (mode == "hold") { // holds left behind, as by a process killed with requests in flight
        for (int i = 0; i < count; ++i) {
            std::string id = prefix + std::to_string(i);
            HoldRequest h{id, user, Pool::CreditsNew, Money{10'000'000},
                          makeCharge(user, id).createdAtMs + 3'600'000};
            if (ledger.reserve(h) != ReserveStatus::Reserved)
                return 1;
        }
        return 0;
    }
    if (mode == "release-holds") { // USER and COUNT are unused
        auto r = ledger.releaseHolds(prefix);
        if (!r)
            return 1;
        std::printf("released %lld\n", static_cast<long long>(*r));
        return 0;
    }
    if (mode == "journal" && argc >= 7) {
        ChargeJournal journal(argv[6]);
        for (int i = 0; i < count; ++i) {
            std::string id = prefix + std::to_string(i);
            if (!journal.append(makeCharge(user, id)))
                return 1;
            std::printf("journalled %s\n", id.c_str());
            std::fflush(stdout);
        }
        auto r = journal.replay(ledger);
        return r && r->pending == 0 ? 0 : 1;
    }
    return 2;
}
