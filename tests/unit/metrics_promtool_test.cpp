// `promtool check metrics` on what the service records: exit 0, no lint output.
// Exits 77 (skipped) when promtool is not installed (Debian package `prometheus`).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "metrics_sample.hpp"

using namespace trollproxy::internal;

namespace {

// `promtool` found on PATH, or empty.
std::string findPromtool() {
    const char* path = std::getenv("PATH");
    std::string dirs = path ? path : "/usr/bin:/bin";
    for (std::size_t start = 0; start <= dirs.size();) {
        std::size_t end = dirs.find(':', start);
        if (end == std::string::npos)
            end = dirs.size();
        std::string candidate = dirs.substr(start, end - start) + "/promtool";
        if (end > start && access(candidate.c_str(), X_OK) == 0)
            return candidate;
        start = end + 1;
    }
    return {};
}

int fail(const std::string& why, const std::string& text) {
    std::fprintf(stderr, "FAIL: %s\n--- rendered metrics ---\n%s", why.c_str(), text.c_str());
    return 1;
}

} // namespace

int main() {
    std::string promtool = findPromtool();
    if (promtool.empty()) {
        std::fprintf(stderr, "promtool not found: skipped (apt-get install prometheus)\n");
        return 77;
    }
    Metrics m;
    test::recordLikeTheService(m);
    std::string text = m.render();

    for (const char* must : {"le=\"0.005\"", "le=\"60\"", "le=\"+Inf\"", " 0.0007095\n"}) {
        if (text.find(must) == std::string::npos)
            return fail(std::string("missing ") + must, text);
    }

    char file[] = "/tmp/trollproxy-metrics-XXXXXX";
    int fd = mkstemp(file);
    if (fd < 0 || write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()))
        return fail("cannot write a temporary file", text);
    close(fd);
    std::string cmd = promtool + " check metrics < " + file + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p)
        return fail("cannot run " + promtool, text);
    std::string output;
    char buf[512];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p))
        output.append(buf, n);
    int status = pclose(p);
    unlink(file);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || !output.empty())
        return fail("promtool check metrics: exit " +
                        std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
                        ", output:\n" + output,
                    text);
    std::printf("promtool check metrics: clean (%zu bytes)\n", text.size());
    return 0;
}
