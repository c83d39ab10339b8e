// embed_billing: a service embedding libtrollproxy — loads a config, prices a usage, holds and
// settles it.
//
// Uses only the installed public API. For every model of the config it creates
// a user in an embedded SQLite ledger and credits the model's pool (LedgerAdmin),
// prices a usage, reserves a hold and settles the actual cost (CreditLedger), and
// checks the balance moved by exactly that cost. Exits 1 on any mismatch.
//
//   embed_billing [CONFIG] [LEDGER_FILE]
//   (defaults: configs/example.json, a temporary file that is removed at the end)
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <unistd.h>

#include <trollproxy/trollproxy.hpp>

using namespace trollproxy;

namespace {

__extension__ typedef __int128 Int128; // exact products; __extension__ keeps -Wpedantic quiet

int failures = 0;

void check(bool ok, const std::string& what) {
    std::printf("  [%s] %s\n", ok ? "ok" : "FAIL", what.c_str());
    if (!ok)
        ++failures;
}

// The pool's spendable amount: creditsNew, or credits + refCredits.
Money spendable(Pool pool, const Balance& b) {
    return pool == Pool::CreditsNew ? b.creditsNew : b.credits + b.refCredits;
}

// The pool's "used" counter.
Money used(Pool pool, const Balance& b) {
    return pool == Pool::CreditsNew ? b.creditsNewUsed : b.creditsUsed;
}

// The documented formula, computed here on its own to check priceUsage():
// sum(tokens × nano-USD per Mtok) × multiplier billionths / 10^15, half up.
Money expectedCost(const PriceTable& p, const Usage& u) {
    Int128 sum = static_cast<Int128>(u.uncachedInput) * p.input.nanos +
                 static_cast<Int128>(u.output) * p.output.nanos +
                 static_cast<Int128>(u.cacheWrite) * p.cacheWrite.nanos +
                 static_cast<Int128>(u.cacheRead) * p.cacheRead.nanos;
    Int128 scaled = sum * p.multiplier.billionths;
    const Int128 div = 1'000'000'000'000'000; // 10^6 tokens per Mtok × 10^9 billionths
    return Money::fromNanos(static_cast<std::int64_t>((scaled + div / 2) / div));
}

void printBalance(const char* label, Pool pool, const Balance& b) {
    std::printf("  %-7s %s=%s used=%s\n", label, poolName(pool),
                spendable(pool, b).toString().c_str(), used(pool, b).toString().c_str());
}

// Adds the user and a key, credits `deposit` to the pool's deposit field and signs in
// with the key as the proxy does; nullopt when no key was made.
std::optional<AuthOutcome> openAccount(CreditLedger& ledger, LedgerAdmin& admin,
                                       const std::string& user, Pool pool, Money deposit) {
    check(admin.addUser(user).ok(), "add user " + user);
    auto key = admin.addKey(user);
    check(key.ok(), "add key");
    if (!key)
        return std::nullopt;
    check(admin.credit(user, depositField(pool), deposit).ok(),
          "credit 1 USD to " + std::string(balanceFieldName(depositField(pool))));
    AuthOutcome auth = ledger.authenticate(*key);
    check(auth.status == AuthStatus::Authorized && auth.account.userId == user,
          "the key authenticates");
    return auth;
}

// Prices the usage, checked against the documented formula.
Money priceAndCheck(const PriceTable& prices, const Usage& usage) {
    Money cost = priceUsage(prices, usage);
    std::printf(
        "  usage   input=1000 cache_write=2000 cache_read=10000 output=500 -> cost %s USD\n",
        cost.toString().c_str());
    check(cost == expectedCost(prices, usage), "priceUsage matches the documented formula");
    return cost;
}

// Reserves `hold` on a balance of `deposit` (`before`), after one a unit too large.
void reserveHold(CreditLedger& ledger, LedgerAdmin& admin, const HoldRequest& hold, Money deposit,
                 const Balance& before) {
    // A hold larger than the balance is refused and changes nothing.
    HoldRequest tooBig{hold.requestId + "-big", hold.userId, hold.pool,
                       deposit + Money::fromNanos(1), 0};
    check(ledger.reserve(tooBig) == ReserveStatus::InsufficientCredits,
          "a hold above the balance is refused");
    check(ledger.reserve(hold) == ReserveStatus::Reserved,
          "reserve a hold of " + hold.amount.toString());
    auto held = admin.balance(hold.userId);
    check(held.ok() && spendable(hold.pool, *held) == spendable(hold.pool, before) - hold.amount,
          "the hold left the balance");
}

// Settles the charge twice: the first charges exactly its cost, the second nothing.
void settleTwice(CreditLedger& ledger, const Charge& charge) {
    SettleOutcome settled = ledger.settle(charge);
    check(settled.status == SettleStatus::Settled && settled.charged == charge.cost &&
              settled.shortfall == Money{},
          "settle charges exactly the cost");
    check(ledger.settle(charge).status == SettleStatus::AlreadySettled,
          "settling again changes nothing");
}

// After the charge: the balance and the counters moved by exactly the charge from
// `before`, and the request log has its one entry.
void checkCharged(LedgerAdmin& admin, const Charge& charge, const Balance& before) {
    auto after = admin.balance(charge.userId);
    check(after.ok(), "read balance");
    if (!after)
        return;
    printBalance("after", charge.pool, *after);
    check(spendable(charge.pool, *after) == spendable(charge.pool, before) - charge.cost,
          "balance fell by the cost");
    check(used(charge.pool, *after) == used(charge.pool, before) + charge.cost,
          "the used counter grew by the cost");
    check(after->totalInputTokens == before.totalInputTokens + charge.usage.totalInput() &&
              after->totalOutputTokens == before.totalOutputTokens + charge.usage.output,
          "token counters grew by the usage");

    auto log = admin.usage(charge.userId, 10);
    check(log.ok() && log->size() == 1 && log->front().requestId == charge.requestId &&
              log->front().cost == charge.cost &&
              log->front().creditType == poolCreditType(charge.pool),
          "one request log entry with the cost");
}

// One request's money, start to end, on the model's pool: `admin` sets the user up
// and reads balances, `ledger` charges as the proxy's request path does.
void billOneRequest(CreditLedger& ledger, LedgerAdmin& admin, const ModelConfig& model, int n) {
    std::printf("%s (billing_upstream %s, pool %s)\n", model.id.c_str(),
                model.billingUpstream.c_str(), poolName(model.pool));
    const std::string user = "embed-user-" + std::to_string(n);
    const Money deposit = Money::fromNanos(Money::kNanosPerUsd); // 1 USD
    std::optional<AuthOutcome> auth = openAccount(ledger, admin, user, model.pool, deposit);
    if (!auth)
        return;

    Usage usage{.uncachedInput = 1000,
                .cacheWrite = 2000,
                .cacheRead = 10000,
                .output = 500,
                .estimated = false};
    Money cost = priceAndCheck(model.prices, usage);

    auto before = admin.balance(user);
    check(before.ok(), "read balance");
    if (!before)
        return;
    printBalance("before", model.pool, *before);

    // Hold twice the cost (an upper bound, as the proxy does), then settle.
    const std::string requestId = "embed-req-" + std::to_string(n);
    Money holdAmount = cost + cost;
    HoldRequest hold{requestId, user, model.pool, holdAmount, 4'102'444'800'000}; // expires in 2100
    reserveHold(ledger, admin, hold, deposit, *before);

    Charge charge;
    charge.requestId = requestId;
    charge.userId = user;
    charge.keyId = auth->account.keyId;
    charge.model = model.id;
    charge.pool = model.pool;
    charge.usage = usage;
    charge.cost = cost;
    settleTwice(ledger, charge);
    checkCharged(admin, charge, *before);
}

} // namespace

int main(int argc, char** argv) {
    std::string configPath = argc > 1 ? argv[1] : "configs/example.json";
    std::string ledgerPath;
    bool temporary = argc <= 2;
    if (!temporary) {
        ledgerPath = argv[2];
    } else {
        std::string tmpl =
            (std::filesystem::temp_directory_path() / "embed-billing-XXXXXX").string();
        if (!mkdtemp(tmpl.data())) {
            std::perror("mkdtemp");
            return 1;
        }
        ledgerPath = tmpl + "/ledger.db";
    }

    auto config = loadConfigFile(configPath);
    if (!config) {
        std::fprintf(stderr, "%s\n", config.error().message.c_str());
        return 1;
    }
    std::printf("config %s: %zu models\n", config->sourceName.c_str(), config->models.size());

    {
        auto ledger = openLedger("sqlite:" + ledgerPath);
        if (!ledger) {
            std::fprintf(stderr, "ledger: %s\n", ledger.error().message.c_str());
            return 1;
        }
        auto admin = openLedgerAdmin("sqlite:" + ledgerPath);
        if (!admin) {
            std::fprintf(stderr, "ledger admin: %s\n", admin.error().message.c_str());
            return 1;
        }
        int n = 0;
        for (const ModelConfig& model : config->models)
            billOneRequest(**ledger, **admin, model, n++);
        check(n > 0, "the config has models");
    }
    if (temporary)
        std::filesystem::remove_all(std::filesystem::path(ledgerPath).parent_path());

    std::printf("%s: %d check(s) failed\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
