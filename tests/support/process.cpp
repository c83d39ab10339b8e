// Starting, watching and stopping the processes the tests run, and the files they share.
#include "process.hpp"

#include <arpa/inet.h>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <netinet/in.h>
#include <poll.h>
#include <spawn.h>
#include <sstream>
#include <stdexcept>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char** environ;

namespace support {

namespace {

using Clock = std::chrono::steady_clock;

// The inherited environment with `env` added, replacing variables of the same name.
std::vector<std::string> environment(const std::map<std::string, std::string>& env) {
    std::vector<std::string> out;
    for (char** e = environ; *e; ++e) {
        std::string s = *e;
        if (!env.count(s.substr(0, s.find('='))))
            out.push_back(s);
    }
    for (const auto& [k, v] : env)
        out.push_back(k + "=" + v);
    return out;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
    std::vector<char*> out;
    for (auto& s : strings)
        out.push_back(s.data());
    out.push_back(nullptr);
    return out;
}

} // namespace

Process::Process(std::vector<std::string> argv, std::map<std::string, std::string> env)
    : Process(std::move(argv), std::move(env), Options{}) {}

Process::Process(std::vector<std::string> argv, std::map<std::string, std::string> env,
                 Options options) {
    spawn(argv, env, options);
    if (!options.awaitListening)
        return;
    port_ = portOnLine("listening on ", 20);
    if (port_ >= 0)
        return;
    signal(SIGKILL, true);
    throw std::runtime_error(argv[0] + " did not start; printed: " + output_);
}

void Process::spawn(std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                    const Options& options) {
    int pipeFds[2] = {-1, -1};
    if (options.awaitListening && ::pipe(pipeFds) != 0)
        throw std::runtime_error("pipe failed");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (options.awaitListening) {
        posix_spawn_file_actions_adddup2(&fa, pipeFds[1], 1);
        posix_spawn_file_actions_addclose(&fa, pipeFds[0]);
    }
    if (!options.stderrPath.empty())
        posix_spawn_file_actions_addopen(&fa, 2, options.stderrPath.c_str(),
                                         O_WRONLY | O_CREAT | O_APPEND, 0644);
    std::vector<std::string> envStrings = environment(env);
    std::vector<char*> args = pointers(argv), envp = pointers(envStrings);
    int err = posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (options.awaitListening)
        ::close(pipeFds[1]);
    stdoutFd_ = pipeFds[0];
    if (err != 0) {
        pid_ = -1;
        throw std::runtime_error("cannot start " + argv[0]);
    }
}

int Process::portOnLine(const std::string& marker, double seconds) {
    auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    for (;;) {
        auto at = output_.find(marker);
        auto nl = at == std::string::npos ? std::string::npos : output_.find('\n', at);
        if (nl != std::string::npos) {
            std::string addr = output_.substr(at + marker.size(), nl - at - marker.size());
            output_.erase(0, nl + 1);
            return std::atoi(addr.substr(addr.rfind(':') + 1).c_str());
        }
        if (Clock::now() >= deadline || stdoutFd_ < 0)
            return -1;
        pollfd p{stdoutFd_, POLLIN, 0};
        if (::poll(&p, 1, 200) <= 0)
            continue;
        char buf[512];
        ssize_t n = ::read(stdoutFd_, buf, sizeof buf);
        if (n <= 0)
            return -1;
        output_.append(buf, static_cast<std::size_t>(n));
    }
}

bool Process::waitForPort(int port, double seconds) {
    auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < deadline) {
        if (!running())
            return false;
        if (acceptsConnections(port))
            return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
}

Process::~Process() {
    if (pid_ > 0 && running())
        signal(SIGKILL, true);
    if (stdoutFd_ >= 0)
        ::close(stdoutFd_);
}

int Process::signal(int sig, bool wait) {
    if (pid_ <= 0)
        return -1;
    ::kill(pid_, sig);
    if (!wait)
        return 0;
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
}

void Process::stop(double graceSeconds) {
    if (pid_ <= 0)
        return;
    ::kill(pid_, SIGTERM);
    auto deadline = Clock::now() + std::chrono::duration<double>(graceSeconds);
    while (Clock::now() < deadline) {
        if (!running())
            return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    signal(SIGKILL, true);
}

bool Process::running() {
    if (pid_ <= 0)
        return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
    }
    return true;
}

std::string buildRoot() {
    const char* r = std::getenv("TROLLPROXY_BUILD_ROOT");
    return r ? r : ".";
}

std::string sourceRoot() {
    const char* r = std::getenv("TROLLPROXY_SOURCE_ROOT");
    return r ? r : "..";
}

std::string tempDir() {
    std::string t = "/tmp/trollproxy-test-XXXXXX";
    if (!::mkdtemp(t.data()))
        throw std::runtime_error("mkdtemp failed");
    return t;
}

void writeFile(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
}

std::string readFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

bool acceptsConnections(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return ok;
}

std::vector<std::string> fakeUpstreamArgv(const std::vector<std::string>& args) {
    std::vector<std::string> argv{buildRoot() + "/tests/fake_upstream/trollproxy-fake-upstream",
                                  "--listen", "127.0.0.1:0"};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
}

std::vector<std::string> proxyArgv(const std::string& config, const std::string& ledgerUri,
                                   const std::string& journal) {
    return {buildRoot() + "/server/trollproxy",
            "--config",
            config,
            "--ledger",
            ledgerUri,
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--journal",
            journal};
}

std::string withUpstream(std::string config, int upstreamPort) {
    const std::string base = "http://127.0.0.1:" + std::to_string(upstreamPort);
    for (std::size_t p; (p = config.find("UPSTREAM")) != std::string::npos;)
        config.replace(p, 8, base);
    return config;
}

} // namespace support
