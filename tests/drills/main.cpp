// trollproxy-drills: runs the fault drills against real processes and prints a verdict for each.
#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <string>
#include <unistd.h>
#include <vector>

#include "drill.hpp"

namespace {

const char kUsage[] =
    "usage: trollproxy-drills [--quick] [--requests N] [--covers N] [--outage-seconds S]\n"
    "                         [--soak-seconds S] [--mongo] DRILL...\n"
    "  DRILL: overspend crash outage upstream-faults soak\n"
    "         slices-overspend slices-crash slices-outage slices-keys\n"
    "         slices (the four slices-*)  all (every drill)\n"
    "  --quick  the short CI sizes (100 requests covering 10, 20 s soak; the outage stays 10 s)\n"
    "  --mongo  also run the outage and slices-* drills against CongoDB (tests/mongo) when it is\n"
    "           installed\n";

const std::vector<std::string> kSliceDrills{"slices-overspend", "slices-crash", "slices-outage",
                                            "slices-keys"};

int runDrill(const std::string& d, const drills::Options& o) {
    return d == "overspend"          ? drills::overspendDrill(o)
           : d == "crash"            ? drills::crashDrill(o)
           : d == "outage"           ? drills::outageDrill(o)
           : d == "soak"             ? drills::soakDrill(o)
           : d == "upstream-faults"  ? drills::upstreamFaultsDrill(o)
           : d == "slices-overspend" ? drills::slicesOverspendDrill(o)
           : d == "slices-crash"     ? drills::slicesCrashDrill(o)
           : d == "slices-outage"    ? drills::slicesOutageDrill(o)
                                     : drills::slicesKeysDrill(o);
}

std::string exeDir() {
    char buf[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    std::string p(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
    return p.substr(0, p.rfind('/'));
}

} // namespace

int main(int argc, char** argv) {
    if (argc == 4 && std::string(argv[1]) == "lock-sqlite")
        return drills::lockSqliteMain(argv[2], std::atof(argv[3]));
    drills::Options o;
    o.self = exeDir() + "/trollproxy-drills";
    bool mongo = false;
    std::vector<std::string> which;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto num = [&] { return i + 1 < argc ? std::atof(argv[++i]) : -1.0; };
        if (a == "--quick") {
            o.quick = true;
            o.overspendRequests = 100;
            o.overspendCovers = 10;
            o.outageSeconds = 10; // a request can wait 3 s (reserve) + 3 s (settle) + 3 s
                                  // (journal): the outage must outlast that
            o.soakSeconds = 20;
        } else if (a == "--requests")
            o.overspendRequests = static_cast<int>(num());
        else if (a == "--covers")
            o.overspendCovers = static_cast<int>(num());
        else if (a == "--outage-seconds")
            o.outageSeconds = num();
        else if (a == "--soak-seconds")
            o.soakSeconds = num();
        else if (a == "--mongo")
            mongo = true;
        else if (a == "all" || a == "slices") {
            if (a == "all")
                which.insert(which.end(),
                             {"overspend", "crash", "outage", "upstream-faults", "soak"});
            which.insert(which.end(), kSliceDrills.begin(), kSliceDrills.end());
        } else if (a == "overspend" || a == "crash" || a == "outage" || a == "upstream-faults" ||
                   a == "soak" || std::count(kSliceDrills.begin(), kSliceDrills.end(), a))
            which.push_back(a);
        else {
            std::fputs(kUsage, stderr);
            return 2;
        }
    }
    if (which.empty()) {
        std::fputs(kUsage, stderr);
        return 2;
    }
    // Run from anywhere: the build tree is three levels up from this program.
    std::string build = exeDir() + "/../..";
    setenv("TROLLPROXY_BUILD_ROOT", build.c_str(), 0);

    std::unique_ptr<harness::Process> congo;
    if (mongo) {
        std::string src = std::getenv("TROLLPROXY_SOURCE_ROOT")
                              ? std::getenv("TROLLPROXY_SOURCE_ROOT")
                              : build + "/..";
        std::string script = src + "/tests/mongo/congo.mjs";
        if (::access((src + "/tests/mongo/node_modules/@push.rocks/smartmongo").c_str(), R_OK) ==
            0) {
            // congo.mjs stops when its stdin closes: give it a pipe this process
            // holds open until it exits.
            int fds[2];
            if (::pipe2(fds, O_CLOEXEC) != 0)
                return 1;
            int saved = ::dup(0);
            ::dup2(fds[0], 0);
            congo = std::make_unique<harness::Process>(
                std::vector<std::string>{"/usr/bin/env", "node", script});
            ::dup2(saved, 0);
            ::close(saved);
            ::close(fds[0]);
            o.mongoUri = "mongodb://127.0.0.1:" + std::to_string(congo->port());
            o.mongoPid = congo->pid();
        } else {
            std::printf("CongoDB is not installed (tests/mongo/install.sh): the MongoDB outage "
                        "and slices drills are skipped\n");
        }
    }
    int failed = 0;
    std::vector<std::pair<std::string, int>> results;
    for (const auto& d : which) {
        int rc = 1;
        try {
            rc = runDrill(d, o);
        } catch (const std::exception& e) {
            std::printf("=== %s: FAIL (error: %s)\n", d.c_str(), e.what());
        }
        results.emplace_back(d, rc);
        failed += rc != 0;
    }
    std::printf("\nsummary:");
    for (const auto& [d, rc] : results)
        std::printf(" %s=%s", d.c_str(), rc ? "FAIL" : "PASS");
    std::printf("\n");
    return failed ? 1 : 0;
}
