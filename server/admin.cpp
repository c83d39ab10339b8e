// trollproxy-admin: users, keys, credits, balances and usage in either ledger; journal replay;
// price quotes.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

#include "trollproxy/trollproxy.hpp"

using namespace trollproxy;

namespace {

const char kUsage[] =
    "usage: trollproxy-admin [--ledger URI] [--config FILE] [--journal PATH] COMMAND ...\n"
    "  user add NAME\n"
    "  key add NAME                 prints a new sk-trollllm- key\n"
    "  key revoke KEY\n"
    "  credit NAME POOL AMOUNT      POOL: credits, refCredits, creditsNew; AMOUNT in USD\n"
    "  balance NAME                 the balance fields, then the money held in open requests\n"
    "  usage NAME [--last N]\n"
    "  journal replay               the --journal file, else the one the --config file names\n"
    "                               (journal_path, else trollproxy-PORT.journal), else every\n"
    "                               trollproxy-*.journal in this directory\n"
    "  quote --config FILE --model ID --input N --output N [--cache-write N] [--cache-write-1h N]\n"
    "        [--cache-read N]   (--cache-write: 5-minute writes; --cache-write-1h: 1-hour writes)\n"
    "--ledger defaults to $MONGODB_URI, else sqlite:trollproxy.db.\n";

int fail(const std::string& msg) {
    std::fprintf(stderr, "trollproxy-admin: %s\n", msg.c_str());
    return 1;
}

bool parseCount(const std::string& s, std::int64_t& out) {
    if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string::npos)
        return false;
    out = std::stoll(s);
    return true;
}

int quote(const std::vector<std::string>& args, const std::string& config) {
    std::string model;
    std::int64_t counts[5] = {-1, -1, 0, 0,
                              0}; // input, output, cache write (5 min), cache read, (1 h)
    const char* names[5] = {"--input", "--output", "--cache-write", "--cache-read",
                            "--cache-write-1h"};
    for (std::size_t i = 0; i < args.size(); i += 2) {
        if (i + 1 >= args.size())
            return fail(args[i] + " needs a value");
        const std::string& k = args[i];
        const std::string& v = args[i + 1];
        bool known = false;
        if (k == "--model") {
            model = v;
            known = true;
        }
        for (int n = 0; n < 5; ++n) {
            if (k == names[n]) {
                known = true;
                if (!parseCount(v, counts[n]))
                    return fail(k + " must be a whole number of tokens, not \"" + v + "\"");
            }
        }
        if (!known)
            return fail("unknown option " + k);
    }
    if (config.empty() || model.empty() || counts[0] < 0 || counts[1] < 0)
        return fail("quote needs --config, --model, --input and --output");
    auto cfg = loadConfigFile(config);
    if (!cfg)
        return fail(cfg.error().message);
    const ModelConfig* m = cfg->findModel(model);
    if (!m)
        return fail("no model \"" + model + "\" in " + config);
    Usage u{counts[0], counts[2] + counts[4], counts[3], counts[1], false, counts[4]};
    std::printf("%s\n", priceUsage(m->prices, u).toString().c_str());
    return 0;
}

std::string isoTime(std::int64_t ms) {
    std::time_t t = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

// credit NAME POOL AMOUNT
int creditCommand(LedgerAdmin& l, const std::vector<std::string>& a) {
    auto amount = Money::parse(a[3]);
    if (!amount)
        return fail("AMOUNT: " + amount.error().message);
    if (amount->nanos < 0)
        return fail("AMOUNT must not be negative");
    auto field = parseBalanceField(a[2]);
    if (!field)
        return fail(field.error().message);
    auto r = l.credit(a[1], *field, *amount);
    return r ? (std::printf("%s %s +%s\n", a[1].c_str(), a[2].c_str(), amount->toString().c_str()),
                0)
             : fail(r.error().message);
}

// balance NAME
int balanceCommand(LedgerAdmin& l, const std::string& name) {
    auto b = l.balance(name);
    if (!b)
        return fail(b.error().message);
    std::printf("credits %s\nrefCredits %s\ncreditsUsed %s\ncreditsNew %s\ncreditsNewUsed %s\n"
                "tokensUserNew %lld\ntotalInputTokens %lld\ntotalOutputTokens %lld\n",
                b->credits.toString().c_str(), b->refCredits.toString().c_str(),
                b->creditsUsed.toString().c_str(), b->creditsNew.toString().c_str(),
                b->creditsNewUsed.toString().c_str(), static_cast<long long>(b->tokensUserNew),
                static_cast<long long>(b->totalInputTokens),
                static_cast<long long>(b->totalOutputTokens));
    // Holds come after the fields, so that scripts reading those lines see no change.
    std::printf("heldCredits %s\nheldRefCredits %s\nheldCreditsNew %s\n",
                b->heldCredits.toString().c_str(), b->heldRefCredits.toString().c_str(),
                b->heldCreditsNew.toString().c_str());
    return 0;
}

// One line of `usage`.
void printLogEntry(const LogEntry& e) {
    std::printf(
        "%s %s %s pool=%s status=%d input=%lld output=%lld cache_write=%lld cache_read=%lld "
        "cost=%s%s%s\n",
        isoTime(e.createdAtMs).c_str(), e.requestId.c_str(), e.model.c_str(),
        e.creditType == "ohmygpt" ? "credits" : "creditsNew", e.statusCode,
        static_cast<long long>(e.usage.uncachedInput), static_cast<long long>(e.usage.output),
        static_cast<long long>(e.usage.cacheWrite), static_cast<long long>(e.usage.cacheRead),
        e.cost.toString().c_str(), e.usage.estimated ? " estimated" : "",
        e.shortfall.nanos ? (" shortfall=" + e.shortfall.toString()).c_str() : "");
}

// usage NAME [--last N]
int usageCommand(LedgerAdmin& l, const std::vector<std::string>& a) {
    std::int64_t last = 20;
    if (a.size() == 4 && (!parseCount(a[3], last) || last == 0))
        return fail("--last must be a positive whole number");
    auto entries = l.usage(a[1], last);
    if (!entries)
        return fail(entries.error().message);
    if (entries->empty() && !l.balance(a[1]))
        return fail("no user " + a[1]);
    for (const auto& e : *entries)
        printLogEntry(e);
    return 0;
}

int adminCommand(LedgerAdmin& l, const std::vector<std::string>& a) {
    auto is = [&](std::initializer_list<const char*> words) {
        if (a.size() < words.size())
            return false;
        std::size_t i = 0;
        for (const char* w : words) {
            if (w && a[i] != w)
                return false;
            ++i;
        }
        return true;
    };
    if (is({"user", "add", nullptr}) && a.size() == 3) {
        auto r = l.addUser(a[2]);
        return r ? (std::printf("user %s added\n", a[2].c_str()), 0) : fail(r.error().message);
    }
    if (is({"key", "add", nullptr}) && a.size() == 3) {
        auto r = l.addKey(a[2]);
        return r ? (std::printf("%s\n", r->c_str()), 0) : fail(r.error().message);
    }
    if (is({"key", "revoke", nullptr}) && a.size() == 3) {
        auto r = l.revokeKey(a[2]);
        return r ? (std::printf("key revoked\n"), 0) : fail(r.error().message);
    }
    if (is({"credit", nullptr, nullptr, nullptr}) && a.size() == 4)
        return creditCommand(l, a);
    if (is({"balance", nullptr}) && a.size() == 2)
        return balanceCommand(l, a[1]);
    if (is({"usage", nullptr}) && (a.size() == 2 || (a.size() == 4 && a[2] == "--last")))
        return usageCommand(l, a);
    std::fputs(kUsage, stderr);
    return 1;
}

// The server's default journal names (Config::journalFile() without journal_path) in
// the working directory, sorted.
std::vector<std::string> defaultJournals() {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(".", ec)) {
        std::string name = e.path().filename().string();
        if (e.is_regular_file(ec) && name.size() > 19 && name.rfind("trollproxy-", 0) == 0 &&
            name.compare(name.size() - 8, 8, ".journal") == 0)
            out.push_back(name);
    }
    std::sort(out.begin(), out.end());
    return out;
}

// Settles the charges waiting in each journal (the request path's settle(), so
// each counts once however often it is replayed); 1 when any is left pending.
int replayJournals(const std::string& ledgerUri, const std::vector<std::string>& paths) {
    auto ledger = openLedger(ledgerUri);
    if (!ledger)
        return fail(ledger.error().message);
    int status = 0;
    for (const auto& path : paths) {
        ChargeJournal journal(path);
        auto r = journal.replay(**ledger);
        if (!r) {
            std::fprintf(stderr, "trollproxy-admin: %s: %s\n", path.c_str(),
                         r.error().message.c_str());
            status = 1;
            continue;
        }
        std::printf("%s: applied %lld, already settled %lld, pending %lld, unreadable %lld\n",
                    path.c_str(), static_cast<long long>(r->applied),
                    static_cast<long long>(r->alreadySettled), static_cast<long long>(r->pending),
                    static_cast<long long>(r->corrupt));
        if (r->pending)
            status = 1;
    }
    return status;
}

int journalReplay(const std::string& ledgerUri, const std::string& configPath,
                  const std::string& journalPath) {
    if (!journalPath.empty())
        return replayJournals(ledgerUri, {journalPath});
    if (!configPath.empty()) {
        auto cfg = loadConfigFile(configPath);
        if (!cfg)
            return fail(cfg.error().message);
        return replayJournals(ledgerUri, {cfg->journalFile()});
    }
    std::vector<std::string> found = defaultJournals();
    if (found.empty()) {
        std::printf("no trollproxy-*.journal here: nothing to replay (or give --journal PATH or "
                    "--config FILE)\n");
        return 0;
    }
    return replayJournals(ledgerUri, found);
}

} // namespace

int main(int argc, char** argv) {
    std::string ledgerUri, configPath, journalPath;
    std::vector<std::string> args;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if ((a == "--ledger" || a == "--config" || a == "--journal") && i + 1 < argc) {
            (a == "--ledger" ? ledgerUri : a == "--config" ? configPath : journalPath) = argv[++i];
        } else if (a == "--help" || a == "-h") {
            std::fputs(kUsage, stdout);
            return 0;
        } else {
            args.push_back(a);
        }
    }
    if (args.empty()) {
        std::fputs(kUsage, stderr);
        return 1;
    }
    if (args[0] == "quote")
        return quote(std::vector<std::string>(args.begin() + 1, args.end()), configPath);
    if (ledgerUri.empty())
        ledgerUri = defaultLedgerUri();
    if (args.size() == 2 && args[0] == "journal" && args[1] == "replay")
        return journalReplay(ledgerUri, configPath, journalPath);
    auto admin = openLedgerAdmin(ledgerUri);
    if (!admin)
        return fail(admin.error().message);
    return adminCommand(**admin, args);
}
