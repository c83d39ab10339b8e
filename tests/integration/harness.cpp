// The integration stack (test upstream, proxy, ledger) and a raw-socket HTTP client.
#include "harness.hpp"

#include <arpa/inet.h>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <netinet/in.h>
#include <poll.h>
#include <stdexcept>
#include <sys/socket.h>
#include <unistd.h>

#include "../support/users.hpp"

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

std::string buildRequest(const std::string& method, const std::string& path,
                         const std::string& body,
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

Stack::Stack(const std::string& configTemplate, std::map<std::string, std::string> proxyEnv,
             std::vector<std::string> upstreamArgs) {
    dir = tempDir();
    ledgerUri = "sqlite:" + dir + "/ledger.db";
    upstream = std::make_unique<Process>(support::fakeUpstreamArgv(upstreamArgs));
    writeFile(dir + "/config.json", support::withUpstream(configTemplate, upstream->port()));
    ledger = support::openAdmin(ledgerUri);
    if (!proxyEnv.count("TROLLPROXY_UPSTREAM_KEYS"))
        proxyEnv["TROLLPROXY_UPSTREAM_KEYS"] = "upstream-key-1";
    proxy = std::make_unique<Process>(
        support::proxyArgv(dir + "/config.json", ledgerUri, dir + "/charges.journal"), proxyEnv);
    metricsPort = proxy->portOnLine("metrics listening on ");
}

std::string Stack::userWithKey(const std::string& name, const std::string& credits,
                               const std::string& refCredits, const std::string& creditsNew) {
    return support::addUserWithKey(*ledger, name, credits, refCredits, creditsNew);
}

trollproxy::Balance Stack::balance(const std::string& name) {
    return support::balanceOf(*ledger, name);
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
        std::string line =
            head.substr(p + 2, e == std::string::npos ? std::string::npos : e - p - 2);
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
