// Hostile clients cannot stop service for others: bounded heads, slow heads, bodies refused
// before they are read, pipelining; /metrics on its own listener; reloads that need a restart.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include "harness.hpp"

using namespace harness;

namespace {

using Clock = std::chrono::steady_clock;

const char* kConfig =
    R"({"port": 8000, "endpoints": [{"name": "ant", "base_url": "UPSTREAM/v1/messages"}],
  "models": [{"id": "a", "billing_upstream": "openhands", "output_price_per_mtok": 1}],
  "trollproxy": {"worker_threads": 8}})";

const char* kBody = R"({"model":"a","max_tokens":10,"messages":[{"role":"user","content":"hi"}]})";

double secondsSince(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

/// One raw client connection.
class Client {
public:
    explicit Client(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<uint16_t>(port));
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
        timeval tv{5, 0}; // a send the server stopped reading fails instead of hanging
        ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    ~Client() { ::close(fd_); }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    bool connected() const { return connected_; }

    /// Sends all bytes; false when the server closed or stopped reading.
    bool send(const std::string& bytes) {
        for (std::size_t off = 0; off < bytes.size();) {
            ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
            if (n <= 0)
                return false;
            off += static_cast<std::size_t>(n);
        }
        return true;
    }

    /// Reads until `done(received)` holds, the server closes, or `seconds` pass.
    std::string read(double seconds, const std::function<bool(const std::string&)>& done = {}) {
        auto start = Clock::now();
        while (!(done && done(in_)) && !closed_ && secondsSince(start) < seconds) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0)
                continue;
            char buf[65536];
            ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
            if (n <= 0)
                closed_ = true;
            else
                in_.append(buf, static_cast<std::size_t>(n));
        }
        return in_;
    }
    bool closed() const { return closed_; }
    /// Whether the server has closed the connection, without waiting.
    bool closedNow() {
        read(0.001);
        return closed_;
    }

private:
    int fd_;
    bool connected_ = false;
    bool closed_ = false;
    std::string in_;
};

struct Answer {
    int status = 0;
    std::string head;
    std::string body;
};

/// Splits the answers in `raw` (Content-Length or chunked bodies).
std::vector<Answer> answers(const std::string& raw) {
    std::vector<Answer> out;
    std::size_t p = 0;
    while (p < raw.size()) {
        auto end = raw.find("\r\n\r\n", p);
        if (end == std::string::npos)
            break;
        Answer a;
        a.head = raw.substr(p, end - p);
        a.status = std::atoi(a.head.c_str() + a.head.find(' ') + 1);
        p = end + 4;
        auto cl = a.head.find("Content-Length: ");
        if (cl != std::string::npos) {
            std::size_t len = std::strtoul(a.head.c_str() + cl + 16, nullptr, 10);
            a.body = raw.substr(p, len);
            p += len;
        } else if (a.head.find("Transfer-Encoding: chunked") != std::string::npos) {
            for (;;) {
                auto nl = raw.find("\r\n", p);
                if (nl == std::string::npos)
                    return out;
                std::size_t len = std::strtoul(raw.c_str() + p, nullptr, 16);
                a.body += raw.substr(nl + 2, len);
                p = nl + 2 + len + 2;
                if (len == 0)
                    break;
            }
        }
        out.push_back(a);
    }
    return out;
}

/// Whether `raw` holds `n` whole answers.
std::function<bool(const std::string&)> hasAnswers(std::size_t n) {
    return [n](const std::string& raw) { return answers(raw).size() >= n; };
}

std::string messagesRequest(const std::string& key, const std::string& connection = "keep-alive") {
    return "POST /v1/messages HTTP/1.1\r\nHost: t\r\nConnection: " + connection +
           "\r\nContent-Type: application/json\r\nx-api-key: " + key +
           "\r\nContent-Length: " + std::to_string(std::strlen(kBody)) + "\r\n\r\n" + kBody;
}

const std::string kHealth = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";

long rssKiB(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0)
            return std::atol(line.c_str() + 6);
    }
    return 0;
}

bool healthy(const Stack& s) {
    return get(s.proxy->port(), "/health").status == 200;
}

} // namespace

TEST_CASE("too many headers or too large a head: 431 at once, then the connection closes") {
    Stack s(kConfig);
    // 100 headers are allowed (Host, 98 more and Connection); the 101st is not.
    std::string head = "GET /health HTTP/1.1\r\nHost: t\r\n";
    for (int i = 0; i < 98; ++i)
        head += "X-H" + std::to_string(i) + ": v\r\n";
    CHECK(rawExchange(s.proxy->port(), head + "Connection: close\r\n\r\n").status == 200);
    CHECK(rawExchange(s.proxy->port(), head + "X-One-Too-Many: v\r\nConnection: close\r\n\r\n")
              .status == 431);

    // 100,000 headers (1.6 MB): refused without parsing them (the whole flood took 16 s of CPU).
    {
        Client c(s.proxy->port());
        REQUIRE(c.connected());
        auto start = Clock::now();
        std::thread sender([&c] {
            std::string flood = "POST /v1/messages HTTP/1.1\r\nHost: t\r\n";
            for (int i = 0; i < 100'000; ++i)
                flood += "X-Flood-" + std::to_string(i) + ": v\r\n";
            c.send(flood);
        });
        std::string raw = c.read(5, hasAnswers(1));
        double took = secondsSince(start);
        sender.join();
        auto a = answers(raw);
        REQUIRE(a.size() == 1);
        CHECK(a[0].status == 431);
        CHECK(a[0].head.find("Connection: close") != std::string::npos);
        CHECK(a[0].body.find(R"({"error":{"message":"more than 100 header fields")") == 0);
        CHECK(took < 2);
        c.read(5);
        CHECK(c.closed());
    }
    // One header line of 70 KB: over the 64 KiB head.
    auto big = rawExchange(
        s.proxy->port(),
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + std::string(70'000, 'b') + "\r\n\r\n", 5);
    CHECK(big.status == 431);
    CHECK(big.headers["connection"] == "close");
    CHECK(healthy(s));
}

TEST_CASE("ambiguous framing is refused; a request without a length has no body") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    auto te =
        rawExchange(s.proxy->port(),
                    "POST /v1/messages HTTP/1.1\r\nHost: t\r\nx-api-key: " + key +
                        "\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                    5);
    CHECK(te.status == 400);
    CHECK(te.headers["connection"] == "close");
    CHECK(rawExchange(s.proxy->port(),
                      "POST /v1/messages HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                      "Content-Length: 6\r\n\r\nhello",
                      5)
              .status == 400);
    CHECK(rawExchange(s.proxy->port(),
                      "POST /v1/messages HTTP/1.1\r\nHost: t\r\n"
                      "Transfer-Encoding: gzip\r\n\r\n",
                      5)
              .status == 501);
    // No Content-Length, no Transfer-Encoding: the body is empty (httplib 0.11 would wait for
    // the client to close); the answer comes at once and the connection stays usable.
    Client c(s.proxy->port());
    auto start = Clock::now();
    c.send("POST /v1/messages HTTP/1.1\r\nHost: t\r\nx-api-key: " + key + "\r\n\r\n" + kHealth);
    auto a = answers(c.read(5, [](const std::string& raw) {
        auto got = answers(raw);
        return got.size() == 2 ||
               (got.size() == 1 && got[0].head.find("Connection: close") != std::string::npos);
    }));
    CHECK(secondsSince(start) < 2);
    REQUIRE(!a.empty());
    CHECK(a[0].status >= 400);
    CHECK(a[0].status < 500);
    if (a[0].head.find("Connection: close") == std::string::npos) {
        REQUIRE(a.size() == 2);
        CHECK(a[1].status == 200);
    }
    CHECK(healthy(s));
}

TEST_CASE("an unauthenticated large body is refused before it is read") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    const std::size_t kLen = 45 * 1024 * 1024;
    std::string head = "POST /v1/messages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                       "x-api-key: sk-not-a-key\r\nContent-Length: " +
                       std::to_string(kLen) + "\r\n";
    // A client that waits for "100 Continue" gets the refusal instead, and sends nothing more.
    {
        Client c(s.proxy->port());
        c.send(head + "Expect: 100-continue\r\n\r\n");
        auto a = answers(c.read(5, hasAnswers(1)));
        REQUIRE(a.size() == 1);
        CHECK(a[0].status == 401);
        CHECK(a[0].head.find("Connection: close") != std::string::npos);
        c.read(5);
        CHECK(c.closed());
    }
    // Ten clients sending 45 MB bodies with a bad key: each gets 401 before its body is read,
    // and the proxy does not grow by the bodies (it grew by 956 MB when it read them).
    long before = rssKiB(s.proxy->pid());
    std::vector<std::thread> clients;
    std::atomic<int> refused{0}, closed{0};
    std::string chunk(1024 * 1024, 'x');
    for (int i = 0; i < 10; ++i) {
        clients.emplace_back([&] {
            Client c(s.proxy->port());
            c.send(head + "\r\n");
            for (std::size_t sent = 0; sent < kLen && c.send(chunk); sent += chunk.size()) {
            }
            auto a = answers(c.read(5, hasAnswers(1)));
            refused += a.size() == 1 && a[0].status == 401 &&
                       a[0].head.find("Connection: close") != std::string::npos;
            c.read(5);
            closed += c.closed();
        });
    }
    for (auto& t : clients)
        t.join();
    CHECK(refused == 10);
    CHECK(closed == 10);
    long grew = rssKiB(s.proxy->pid()) - before;
    MESSAGE("proxy RSS grew by ", grew, " KiB while refusing ten 45 MB bodies");
    CHECK(grew < 64 * 1024);
    // An authenticated request on a fresh connection is served as before.
    Client ok(s.proxy->port());
    ok.send(messagesRequest(key, "close"));
    auto a = answers(ok.read(10, hasAnswers(1)));
    REQUIRE(a.size() == 1);
    CHECK(a[0].status == 200);
    CHECK(healthy(s));
}

TEST_CASE("slow heads hold no worker and get 408; valid requests are answered meanwhile") {
    Stack s(kConfig); // 8 workers: 300 slow clients would hold them all with thread-per-connection
    std::string key = s.userWithKey("u", "0", "0", "10");
    std::vector<std::unique_ptr<Client>> slow;
    for (int i = 0; i < 300; ++i) {
        slow.push_back(std::make_unique<Client>(s.proxy->port()));
        slow.back()->send("POST /v1/messages HTTP/1.1\r\nHost: t\r\nX-Slow: ");
    }
    // 300 idle keep-alive connections, each after one answered request.
    std::vector<std::unique_ptr<Client>> idle;
    for (int i = 0; i < 300; ++i) {
        idle.push_back(std::make_unique<Client>(s.proxy->port()));
        idle.back()->send(kHealth);
    }
    for (auto& c : idle)
        CHECK(answers(c->read(5, hasAnswers(1))).size() == 1);

    auto start = Clock::now();
    double worst = 0;
    int served = 0;
    while (secondsSince(start) < 8) {
        for (auto& c : slow)
            c->send("a"); // a byte at a time, never the end of the head
        auto t = Clock::now();
        Client c(s.proxy->port());
        c.send(messagesRequest(key, "close"));
        auto a = answers(c.read(10, hasAnswers(1)));
        worst = std::max(worst, secondsSince(t));
        served += a.size() == 1 && a[0].status == 200;
        std::this_thread::sleep_for(std::chrono::milliseconds(400));
    }
    MESSAGE("slowest of ", served, " requests during 300 slow heads: ", worst, " s");
    CHECK(served >= 10);
    CHECK(worst < 1.0);
    // The head timeout (10 s from the first byte) ends them with 408.
    int timedOut = 0;
    for (auto& c : slow) {
        auto a = answers(c->read(4, hasAnswers(1)));
        timedOut += a.size() == 1 && a[0].status == 408;
    }
    CHECK(timedOut == 300);
    CHECK(healthy(s));
}

TEST_CASE("more connections than file descriptors: those waiting longest are closed") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    // 512 descriptors, 8 workers: at most 512 - (4 * 8 + 256) = 224 client connections.
    Process own({"/bin/sh", "-c", "ulimit -n 512 && exec \"$0\" \"$@\"",
                 buildRoot() + "/server/trollproxy", "--config", s.dir + "/config.json", "--ledger",
                 s.ledgerUri, "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--journal",
                 s.dir + "/own.journal"},
                {{"TROLLPROXY_UPSTREAM_KEYS", "upstream-key-1"}});
    std::vector<std::unique_ptr<Client>> slow;
    for (int i = 0; i < 600; ++i) {
        slow.push_back(std::make_unique<Client>(own.port()));
        slow.back()->send("POST /v1/messages HTTP/1.1\r\nHost: t\r\nX-Slow: ");
    }
    for (int i = 0; i < 5; ++i) {
        Client c(own.port());
        c.send(messagesRequest(key, "close"));
        auto a = answers(c.read(5, hasAnswers(1)));
        REQUIRE(a.size() == 1);
        CHECK(a[0].status == 200);
    }
    int closed = 0;
    for (auto& c : slow)
        closed += c->closedNow();
    CHECK(closed >= 600 - 224);
    CHECK(slow.front()->closedNow());
    CHECK_FALSE(slow.back()->closedNow());
    CHECK(get(own.port(), "/health").status == 200);
}

TEST_CASE("pipelined requests are answered in order on one connection") {
    Stack s(kConfig);
    std::string key = s.userWithKey("u", "0", "0", "10");
    Client c(s.proxy->port());
    c.send(kHealth + messagesRequest(key) + "GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n" + kHealth);
    auto a = answers(c.read(10, hasAnswers(4)));
    REQUIRE(a.size() == 4);
    CHECK(a[0].status == 200);
    CHECK(a[0].body.find("ok") != std::string::npos);
    CHECK(a[1].status == 200);
    CHECK(a[1].body.find("\"type\":\"message\"") != std::string::npos);
    CHECK(a[2].status == 200);
    CHECK(a[2].body.find("\"object\":\"list\"") != std::string::npos);
    CHECK(a[3].status == 200);
    CHECK_FALSE(c.closed());
    // The connection goes on after the pipelined burst, one request at a time.
    c.send(kHealth);
    CHECK(answers(c.read(5, hasAnswers(5))).size() == 5);

    // A request refused from its head closes the connection; what was pipelined
    // after it is not answered, and the refusal says Connection: close.
    Client r(s.proxy->port());
    r.send(
        "POST /v1/messages HTTP/1.1\r\nHost: t\r\nx-api-key: bad\r\nContent-Length: 2\r\n\r\n{}" +
        kHealth);
    auto refused = answers(r.read(5));
    CHECK(r.closed());
    REQUIRE(refused.size() == 1);
    CHECK(refused[0].status == 401);
    CHECK(refused[0].head.find("Connection: close") != std::string::npos);
    CHECK(healthy(s));
}

TEST_CASE("/metrics is served on its own listener only") {
    Stack s(kConfig);
    REQUIRE(s.metricsPort > 0);
    CHECK(get(s.proxy->port(), "/health").status == 200);
    auto m = get(s.metricsPort, "/metrics");
    CHECK(m.status == 200);
    CHECK(m.body.find("trollproxy_requests_total{route=\"/health\",status=\"200\"}") !=
          std::string::npos);
    auto pub = get(s.proxy->port(), "/metrics");
    CHECK(pub.status == 404);
    CHECK(pub.body.find(R"({"error":{"message":")") == 0);
    CHECK(get(s.metricsPort, "/v1/models").status == 404);

    // A metrics port that is taken does not stop the proxy: it serves without /metrics.
    Process second({buildRoot() + "/server/trollproxy", "--config", s.dir + "/config.json",
                    "--ledger", s.ledgerUri, "--listen", "127.0.0.1:0", "--metrics-listen",
                    "127.0.0.1:" + std::to_string(s.metricsPort), "--journal",
                    s.dir + "/second.journal"},
                   {{"TROLLPROXY_UPSTREAM_KEYS", "upstream-key-1"}});
    CHECK(get(second.port(), "/health").status == 200);
    CHECK(second.portOnLine("metrics listening on ", 0.5) < 0);
}

TEST_CASE("a reload that changes settings read at start says they need a restart") {
    Stack s(kConfig);
    // A proxy of its own, on the config's port (no --listen), with stderr in a file.
    int port = 0;
    {
        int probe = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        ::bind(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
        ::getsockname(probe, reinterpret_cast<sockaddr*>(&addr), &len);
        port = ntohs(addr.sin_port);
        ::close(probe);
    }
    std::string base = "http://127.0.0.1:" + std::to_string(s.upstream->port());
    auto config = [&](int p, const std::string& settings) {
        return R"({"port": )" + std::to_string(p) +
               R"(, "endpoints": [{"name": "ant", "base_url": ")" + base +
               R"(/v1/messages"}], "models": [{"id": "a", "billing_upstream": "openhands"}], "trollproxy": {)" +
               settings + "}}";
    };
    std::string cfgPath = s.dir + "/own.json", errPath = s.dir + "/own.stderr";
    writeFile(cfgPath,
              config(port, R"("metrics_listen": "127.0.0.1:0", "rate_limit_per_minute": 600)"));
    Process own({"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>\"" + errPath + "\"",
                 buildRoot() + "/server/trollproxy", "--config", cfgPath, "--ledger", s.ledgerUri,
                 "--journal", s.dir + "/own.journal"},
                {{"TROLLPROXY_UPSTREAM_KEYS", "upstream-key-1"}});
    REQUIRE(own.port() == port);

    writeFile(
        cfgPath,
        config(port + 1,
               R"("metrics_listen": "off", "worker_threads": 16, "rate_limit_per_minute": 5, )"
               R"("journal_path": "/elsewhere.journal")"));
    own.signal(SIGHUP, false);
    std::string log;
    for (int i = 0; i < 50 && log.find("config reload applied") == std::string::npos; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        std::ifstream in(errPath);
        log.assign(std::istreambuf_iterator<char>(in), {});
    }
    CAPTURE(log);
    CHECK(log.find(R"({"level":"warning","msg":"config reload: port changed )" +
                   std::to_string(port) + " -> " + std::to_string(port + 1) +
                   R"(; restart to apply"})") != std::string::npos);
    CHECK(
        log.find(
            R"(config reload: metrics_listen changed \"127.0.0.1:0\" -> \"\"; restart to apply)") !=
        std::string::npos);
    CHECK(log.find("config reload: worker_threads changed 256 -> 16; restart to apply") !=
          std::string::npos);
    CHECK(log.find(R"(config reload: journal_path changed \"\" -> \"/elsewhere.journal\"; )"
                   R"(not used: --journal sets it)") != std::string::npos);
    CHECK(log.find("rate_limit_per_minute") == std::string::npos); // applied: no warning
    CHECK(log.find("config reload applied, except 3 setting(s) that need a restart") !=
          std::string::npos);
    // Still on the old port.
    CHECK(get(port, "/health").status == 200);
}
