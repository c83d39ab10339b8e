// Process control and a raw-socket HTTP client for the integration tests.
#include "harness.hpp"

#include <arpa/inet.h>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <netinet/in.h>
#include <poll.h>
#include <random>
#include <spawn.h>
#include <stdexcept>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace harness {

namespace {

using Clock = std::chrono::steady_clock;

int connectTo(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        throw std::runtime_error("cannot connect to port " + std::to_string(port));
    }
    return fd;
}

void sendAll(int fd, const std::string& bytes) {
    std::size_t off = 0;
    while (off < bytes.size()) {
        ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        off += static_cast<std::size_t>(n);
    }
}

std::string lower(std::string s) {
    for (auto& c : s)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

std::string buildRequest(const std::string& method, const std::string& path, const std::string& body,
                         const std::map<std::string, std::string>& headers) {
    std::string r = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
    bool hasType = false;
    for (const auto& [k, v] : headers) {
        r += k + ": " + v + "\r\n";
        hasType |= lower(k) == "content-type";
    }
    if (method == "POST") {
        if (!hasType)
            r += "Content-Type: application/json\r\n";
        r += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    }
    return r + "\r\n" + body;
}

} // namespace

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

Process::Process(std::vector<std::string> argv, std::map<std::string, std::string> env) {
    int pipeFds[2];
    if (::pipe(pipeFds) != 0)
        throw std::runtime_error("pipe failed");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pipeFds[1], 1);
    posix_spawn_file_actions_addclose(&fa, pipeFds[0]);
    std::vector<std::string> envStrings;
    for (char** e = environ; *e; ++e) {
        std::string s = *e;
        if (!env.count(s.substr(0, s.find('='))))
            envStrings.push_back(s);
    }
    for (const auto& [k, v] : env)
        envStrings.push_back(k + "=" + v);
    std::vector<char*> args, envp;
    for (auto& a : argv)
        args.push_back(a.data());
    args.push_back(nullptr);
    for (auto& e : envStrings)
        envp.push_back(e.data());
    envp.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), envp.data()) != 0)
        throw std::runtime_error("cannot start " + argv[0]);
    posix_spawn_file_actions_destroy(&fa);
    ::close(pipeFds[1]);
    stdoutFd_ = pipeFds[0];

    // Wait for "listening on HOST:PORT".
    port_ = portOnLine("listening on ", 20);
    if (port_ >= 0)
        return;
    signal(SIGKILL, true);
    throw std::runtime_error(argv[0] + " did not start; printed: " + output_);
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
        if (Clock::now() >= deadline)
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

Stack::Stack(const std::string& configTemplate, std::map<std::string, std::string> proxyEnv,
             std::vector<std::string> upstreamArgs) {
    dir = tempDir();
    ledgerUri = "sqlite:" + dir + "/ledger.db";
    std::vector<std::string> uargs{buildRoot() + "/tests/fake_upstream/trollproxy-fake-upstream",
                                   "--listen", "127.0.0.1:0"};
    uargs.insert(uargs.end(), upstreamArgs.begin(), upstreamArgs.end());
    upstream = std::make_unique<Process>(uargs);
    std::string cfg = configTemplate;
    std::string base = "http://127.0.0.1:" + std::to_string(upstream->port());
    for (std::size_t p; (p = cfg.find("UPSTREAM")) != std::string::npos;)
        cfg.replace(p, 8, base);
    writeFile(dir + "/config.json", cfg);
    auto opened = trollproxy::openLedgerAdmin(ledgerUri);
    if (!opened)
        throw std::runtime_error(opened.error().message);
    ledger = std::move(*opened);
    if (!proxyEnv.count("TROLLPROXY_UPSTREAM_KEYS"))
        proxyEnv["TROLLPROXY_UPSTREAM_KEYS"] = "upstream-key-1";
    proxy = std::make_unique<Process>(
        std::vector<std::string>{buildRoot() + "/server/trollproxy", "--config", dir + "/config.json",
                                 "--ledger", ledgerUri, "--listen", "127.0.0.1:0",
                                 "--metrics-listen", "127.0.0.1:0",
                                 "--journal", dir + "/charges.journal"},
        proxyEnv);
    metricsPort = proxy->portOnLine("metrics listening on ");
}

std::string Stack::userWithKey(const std::string& name, const std::string& credits,
                               const std::string& refCredits, const std::string& creditsNew) {
    if (auto r = ledger->addUser(name); !r)
        throw std::runtime_error(r.error().message);
    auto key = ledger->addKey(name);
    if (!key)
        throw std::runtime_error(key.error().message);
    for (auto [field, amount] : {std::pair{"credits", credits}, {"refCredits", refCredits},
                                 {"creditsNew", creditsNew}}) {
        if (auto r = ledger->credit(name, *trollproxy::parseBalanceField(field), *trollproxy::Money::parse(amount)); !r)
            throw std::runtime_error(r.error().message);
    }
    return *key;
}

trollproxy::Balance Stack::balance(const std::string& name) {
    auto b = ledger->balance(name);
    if (!b)
        throw std::runtime_error(b.error().message);
    return *b;
}

RawResponse rawExchange(int port, const std::string& requestBytes, double timeoutSeconds) {
    RawResponse r;
    int fd = connectTo(port);
    auto start = Clock::now();
    sendAll(fd, requestBytes);
    std::string raw;
    std::size_t headerEnd = std::string::npos;
    while (std::chrono::duration<double>(Clock::now() - start).count() < timeoutSeconds) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0)
            continue;
        char buf[65536];
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            break;
        raw.append(buf, static_cast<std::size_t>(n));
        if (headerEnd == std::string::npos)
            headerEnd = raw.find("\r\n\r\n");
        if (headerEnd != std::string::npos)
            r.chunks.emplace_back(std::chrono::duration<double>(Clock::now() - start).count(),
                                  raw.substr(headerEnd + 4));
    }
    ::close(fd);
    if (headerEnd == std::string::npos)
        return r;
    std::string head = raw.substr(0, headerEnd);
    r.status = std::atoi(head.substr(head.find(' ') + 1, 3).c_str());
    std::size_t p = head.find("\r\n");
    while (p != std::string::npos && p < head.size()) {
        std::size_t e = head.find("\r\n", p + 2);
        std::string line = head.substr(p + 2, e == std::string::npos ? std::string::npos : e - p - 2);
        auto c = line.find(':');
        if (c != std::string::npos)
            r.headers[lower(line.substr(0, c))] = line.substr(line.find_first_not_of(' ', c + 1));
        p = e;
    }
    std::string body = raw.substr(headerEnd + 4);
    if (lower(r.headers["transfer-encoding"]) == "chunked") {
        std::size_t q = 0;
        while (q < body.size()) {
            std::size_t nl = body.find("\r\n", q);
            if (nl == std::string::npos)
                break;
            std::size_t len = std::strtoul(body.substr(q, nl - q).c_str(), nullptr, 16);
            if (len == 0)
                break;
            r.body += body.substr(nl + 2, len);
            q = nl + 2 + len + 2;
        }
    } else {
        r.body = body;
    }
    return r;
}

RawResponse post(int port, const std::string& path, const std::string& body,
                 const std::map<std::string, std::string>& headers, double timeoutSeconds) {
    return rawExchange(port, buildRequest("POST", path, body, headers), timeoutSeconds);
}

RawResponse get(int port, const std::string& path) {
    return rawExchange(port, buildRequest("GET", path, "", {}));
}

std::string postAndHangUp(int port, const std::string& path, const std::string& body,
                          const std::map<std::string, std::string>& headers, std::size_t n) {
    int fd = connectTo(port);
    sendAll(fd, buildRequest("POST", path, body, headers));
    std::string raw;
    auto start = Clock::now();
    while (std::chrono::duration<double>(Clock::now() - start).count() < 20) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0)
            continue;
        char buf[4096];
        ssize_t got = ::recv(fd, buf, sizeof buf, 0);
        if (got <= 0)
            break;
        raw.append(buf, static_cast<std::size_t>(got));
        auto he = raw.find("\r\n\r\n");
        if (he != std::string::npos && raw.size() - he - 4 >= n)
            break;
    }
    linger lg{1, 0}; // reset, like a client that dies
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    ::close(fd);
    return raw;
}

} // namespace harness
