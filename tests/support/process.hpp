// Test processes: start a program, read where it listens, stop it; and the test's paths.
#pragma once

#include <map>
#include <string>
#include <sys/types.h>
#include <vector>

namespace support {

/// A child process. By default its stdout is read for a line "listening on
/// HOST:PORT", as the proxy, the test upstream and the helpers print.
class Process {
public:
    /// How to start it.
    struct Options {
        /// When set, stderr is appended to this file.
        std::string stderrPath;
        /// Wait for "listening on HOST:PORT" on stdout (throws if it does not
        /// come); when false, stdout is the test's and nothing is awaited.
        bool awaitListening = true;
    };

    /// Starts argv (argv[0] is a path) with `env` added to the inherited
    /// environment (replacing variables of the same name), and waits for
    /// "listening on HOST:PORT".
    Process(std::vector<std::string> argv, std::map<std::string, std::string> env = {});
    Process(std::vector<std::string> argv, std::map<std::string, std::string> env, Options options);
    /// Kills (SIGKILL) and reaps the process if it still runs.
    ~Process();
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;

    /// The port of the "listening on" line (0 when not awaited).
    int port() const { return port_; }
    pid_t pid() const { return pid_; }
    /// Waits up to `seconds` for a later stdout line containing `marker` (e.g.
    /// "metrics listening on ") followed by HOST:PORT; returns the port, -1 if none.
    int portOnLine(const std::string& marker, double seconds = 5);
    /// Waits up to `seconds` until 127.0.0.1:port accepts connections; false
    /// when the process exited first (reaped) or the time ran out.
    bool waitForPort(int port, double seconds);
    /// Sends a signal; waits for exit when wait is true and returns the status.
    int signal(int sig, bool wait);
    /// SIGTERM, then SIGKILL after `graceSeconds`; reaps the process.
    void stop(double graceSeconds = 5);
    bool running();

private:
    void spawn(std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
               const Options& options);

    pid_t pid_ = -1;
    int port_ = 0;
    int stdoutFd_ = -1;
    std::string output_; // stdout read so far
};

/// $TROLLPROXY_BUILD_ROOT (else ".") and $TROLLPROXY_SOURCE_ROOT (else "..").
std::string buildRoot();
std::string sourceRoot();
/// A fresh empty directory under /tmp, removed by the OS's tmp cleaning only.
std::string tempDir();
/// Writes a file.
void writeFile(const std::string& path, const std::string& text);
/// A file's bytes ("" when it cannot be read).
std::string readFile(const std::string& path);
/// True when 127.0.0.1:port accepts a TCP connection now.
bool acceptsConnections(int port);

// The programs under test.

/// The test upstream's command line (tests/fake_upstream) on an ephemeral port, then `args`.
std::vector<std::string> fakeUpstreamArgv(const std::vector<std::string>& args = {});
/// The proxy's command line with `config`, `ledgerUri` and `journal`, listening
/// and serving /metrics on ephemeral ports of 127.0.0.1.
std::vector<std::string> proxyArgv(const std::string& config, const std::string& ledgerUri,
                                   const std::string& journal);
/// A config template with each "UPSTREAM" replaced by http://127.0.0.1:PORT.
std::string withUpstream(std::string config, int upstreamPort);

} // namespace support
