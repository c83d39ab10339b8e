// Fault drills: a restartable proxy stack, mixed traffic, and the checks every drill shares.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../integration/harness.hpp"
#include "trollproxy/trollproxy.hpp"

namespace drills {

/// Sizes of one run: the full drills (./dev.sh drills) or the short CI ones.
struct Options {
    bool quick = false;
    int overspendRequests = 500;
    int overspendCovers = 50;
    double outageSeconds = 10;
    double soakSeconds = 1800;
    std::string mongoUri; ///< outage and slice drills against this MongoDB server too, when set
    pid_t mongoPid = 0;   ///< its process, frozen for the outage
    std::string self;     ///< this program's path (for the lock helper)
};

/// Prints what a drill found and remembers whether every check held.
class Verdict {
public:
    explicit Verdict(std::string name);
    /// Prints "  ok   what" or "  FAIL what" and records a failure.
    bool check(bool ok, const std::string& what);
    void note(const std::string& text);
    /// Prints PASS/FAIL; returns 0 or 1.
    int finish();

private:
    std::string name_;
    int failures_ = 0;
};

/// What the fake upstream says it served (its /_stats).
struct FakeStats {
    std::int64_t requests = 0, completed = 0, input = 0, output = 0, cacheWrite = 0, cacheRead = 0;
};

/// Test upstream + proxy (stderr to a file, restartable) + a ledger handle for checks.
/// More proxies (instances 1, 2, …) can share the config and the ledger, each
/// with its own journal, so its own instance and request-id prefix.
struct DrillStack {
    std::string dir;
    std::string ledgerUri;
    std::string config; ///< the config text as written
    std::unique_ptr<harness::Process> upstream;
    std::unique_ptr<harness::Process> proxy;              ///< instance 0
    int metricsPort = 0;                                  ///< instance 0's /metrics listener
    std::vector<std::unique_ptr<harness::Process>> peers; ///< instances 1, 2, …
    std::vector<int> peerMetricsPorts;
    std::unique_ptr<trollproxy::LedgerAdmin> ledger;
    trollproxy::PriceTable prices;      ///< model "m"
    trollproxy::ProxySettings settings; ///< as the proxy reads them

    /// `settings` is the body of the config's "trollproxy" object; an empty
    /// `ledgerUri` means a fresh SQLite file in `dir`; `prices` replaces model
    /// "m"'s price fields (default: input 3, output 15, cache write 3.75, cache
    /// read 0.3 per Mtok, multiplier 1.1).
    DrillStack(const std::string& settings, std::string ledgerUri = "",
               std::vector<std::string> upstreamArgs = {}, std::string prices = "");
    ~DrillStack();

    /// Starts (or restarts) an instance: the same journal path, so the same instance.
    void startProxy(int instance = 0);
    harness::Process& proxyAt(int instance);
    int port(int instance = 0) const;
    int instances() const { return 1 + static_cast<int>(peers.size()); }
    std::string journalPath(int instance = 0) const;
    FakeStats stats();
    void resetStats();
    std::string userWithKey(const std::string& name, trollproxy::Money creditsNew);
    trollproxy::Balance balance(const std::string& name);
    /// Every log entry of the user, keyed by request id; `duplicates` counts ids seen twice.
    std::map<std::string, trollproxy::LogEntry> logs(const std::string& name,
                                                     int* duplicates = nullptr);
    /// The ledger's name for a drill's user (an ObjectId-shaped one on MongoDB).
    std::string ledgerName(const std::string& name) const;
    /// A value from an instance's /metrics (0 when absent).
    double metric(const std::string& series, int instance = 0);
};

/// What kind of failure a request asks the test upstream for.
enum class Fault { None, Status429, Status500, SlowOk, SlowTimeout, Cut3, Cut0, Stall, HangUp };
const char* faultName(Fault f);

/// One request to send, and what a correct proxy charges for it.
struct Shot {
    Fault fault = Fault::None;
    bool stream = false;
    bool anthropic = false;
    std::string path;
    std::string body;
    std::map<std::string, std::string> headers;
    trollproxy::Usage usage; ///< what the upstream reports when it completes
};

/// What the client saw.
struct Outcome {
    Shot shot;
    int status = 0;        ///< 0: no answer (connection failed)
    std::string requestId; ///< x-request-id
    bool complete = false; ///< a whole answer arrived (stream: terminal event and last chunk)
    double started = 0;    ///< now() when sent
    double seconds = 0;
    std::string body;
};

/// Builds a request; `padTo` pads the prompt so every body has that many bytes.
Shot makeShot(const std::string& key, bool anthropic, bool stream, Fault fault,
              trollproxy::Usage usage, int maxTokens = 256, std::size_t padTo = 0);
/// Sends it and reads the answer.
Outcome fire(int port, const Shot& shot, double timeoutSeconds = 60);

/// The mixed load of the fault and soak drills: every Fault kind, both formats, stream or not.
Shot faultShot(const std::string& key, int client, int n);

/// The proxy's charge for a stream cut after `chunks` content chunks.
trollproxy::Usage cutUsage(const Shot& shot, int chunks);

/// Collects outcomes from many threads.
struct Tally {
    std::mutex mutex;
    std::vector<Outcome> outcomes;
    void add(Outcome o);
    std::map<int, int> byStatus();
};

/// Runs `clients` threads sending shots from `next` until `stop` (or each
/// has sent `perClient` when > 0).
void runLoad(int clients, int perClient, std::atomic<bool>& stop,
             const std::function<Shot(int client, int n)>& next, const std::function<int()>& port,
             Tally& tally);
/// The same with a port per client (clients spread over several proxies).
void runLoad(int clients, int perClient, std::atomic<bool>& stop,
             const std::function<Shot(int client, int n)>& next,
             const std::function<int(int client)>& portOf, Tally& tally);

/// Sends 48 concurrent plain requests, 3 each, so every one of 32 workers has
/// opened its ledger connection and its upstream connection (the baseline).
void warmUp(DrillStack& s, const std::string& key, Tally& tally);

/// Process facts from /proc.
std::int64_t rssKb(pid_t pid);
int openFds(pid_t pid);
int threadCount(pid_t pid);
/// A process's descriptors by kind.
struct FdCensus {
    int ledger = 0; ///< the SQLite file and its WAL (two per pooled connection)
    int sockets = 0;
    int other = 0;
    int total() const { return ledger + sockets + other; }
};
FdCensus fdCensus(pid_t pid);
/// Checks descriptors against their bounds: per worker thread one pooled ledger
/// connection (+1 for the ticker) and one cached upstream connection plus
/// curl's two wake-up sockets; everything else back to `baseline`.
void checkFds(Verdict& v, const FdCensus& baseline, const FdCensus& now, int workers);
/// Prints the process's TCP sockets by state and peer port (to explain a descriptor count).
void describeFds(pid_t pid);

/// Holds SQLite's write lock from another process for `seconds`.
std::unique_ptr<harness::Process> lockSqlite(const Options& o, const std::string& dbPath,
                                             double seconds);
/// The helper's body: `drills lock-sqlite PATH SECONDS`.
int lockSqliteMain(const std::string& path, double seconds);

std::string money(trollproxy::Money m);
double now();

/// The ledger checked request by request against what the clients saw.
struct Audit {
    int served = 0;         ///< 200s with a whole answer
    int billed = 0;         ///< log entries
    int missing = 0;        ///< whole answers without a log entry
    int wrongCost = 0;      ///< entries whose cost is not the price of what was served
    int unservedBilled = 0; ///< entries for requests that served nothing
    int unmatched = 0;      ///< entries no client saw an id for
    int duplicates = 0;
    trollproxy::Money logged;      ///< sum of logged costs
    trollproxy::Money decrease;    ///< start - creditsNew
    trollproxy::Money fullCharges; ///< logged costs of complete (non-estimated) answers
    std::int64_t fullEntries = 0;
};
/// Compares the user's log entries with the outcomes; prints the counts and
/// checks them. `allowUnmatched`: a crash may settle a request whose answer
/// never reached the client (they must still cost a full answer).
Audit audit(Verdict& v, DrillStack& s, const std::string& user, trollproxy::Money start,
            const std::vector<Outcome>& outcomes, bool allowUnmatched);

// Budget slices (#13).

/// A ledger a drill runs on: SQLite (uri "": a fresh file in the stack's
/// directory) and, with --mongo, a fresh database on the MongoDB-protocol server.
struct LedgerTarget {
    std::string name;
    std::string uri;
    bool mongo = false;
};
std::vector<LedgerTarget> ledgerTargets(const Options& o);

/// The settings body that turns slices on with journal-first settlement.
std::string sliceSettings(const std::string& maxUsd, double idleSeconds = 2,
                          const std::string& fraction = "0.5");

/// True when no running instance has a charge waiting in its journal.
bool journalsSettled(DrillStack& s);
/// Waits until the user has nothing held (slices given back), no instance has a
/// charge waiting in its journal, and `credited` - creditsNew = the sum of logged costs; false
/// when `seconds` pass first. `took`: how long it waited.
bool waitReleased(DrillStack& s, const std::string& user, trollproxy::Money credited,
                  double seconds, double* took = nullptr);

/// Reads a user's balance every 20 ms from its own ledger handle while a drill
/// runs, and checks the slices' invariant at every sample: no field below zero,
/// and settled charges + outstanding holds (slices included) at most the
/// credits ever added.
class BalanceWatch {
public:
    BalanceWatch(DrillStack& s, const std::string& user, trollproxy::Money credited);
    ~BalanceWatch();
    BalanceWatch(const BalanceWatch&) = delete;
    BalanceWatch& operator=(const BalanceWatch&) = delete;
    /// After a top-up: the credits added so far.
    void credited(trollproxy::Money total);
    /// Stops sampling, prints what it saw and checks it.
    void finish(Verdict& v);
    trollproxy::Money maxHeld() const { return trollproxy::Money{maxHeld_.load()}; }

private:
    void run(std::string uri, std::string name);

    std::atomic<std::int64_t> credited_;
    std::atomic<std::int64_t> maxHeld_{0};
    std::atomic<bool> stop_{false};
    std::atomic<int> samples_{0}, unreadable_{0}, negative_{0}, over_{0};
    std::mutex mutex_;
    std::string firstBad_;
    std::thread thread_;
};

// The drills; each prints what it did and returns 0 (PASS) or 1 (FAIL).
int overspendDrill(const Options& o);
int crashDrill(const Options& o);
int outageDrill(const Options& o);
int upstreamFaultsDrill(const Options& o);
int soakDrill(const Options& o);
int slicesOverspendDrill(const Options& o);
int slicesCrashDrill(const Options& o);
int slicesOutageDrill(const Options& o);
int slicesKeysDrill(const Options& o);

} // namespace drills
