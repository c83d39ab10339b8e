// sse-load: drives N concurrent SSE streams over HTTP/1.1 from one epoll thread and reports,
// per stream, the time to the first event and the gaps between events (benchmarks only).
//
//   sse-load --target 127.0.0.1:PORT --streams N [--rounds R] [--ramp-ms MS] [--path P]
//            [--body-file F] [-H 'Name: value']... [--expect-events E] [--timeout-s S]
//
// Each of the N slots sends R requests one after another on a kept-alive connection
// (a new one if the server closed it). The first connections are spread over --ramp-ms.
// A stream counts as served when it answered 200, delivered at least E events and
// "[DONE]", and ended cleanly. TTFB runs from connect() (or from sending the request on a
// reused connection) to the first complete SSE event; a gap is the time between events k-1
// and k for k = 1..E (the test upstream sends one event, then one every chunk delay); a span
// is the time from event 0 to event E (E chunk delays when nothing stalls).
// Prints one JSON object on stdout.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

using Clock = std::chrono::steady_clock;

double nowMs() {
    return std::chrono::duration<double, std::milli>(Clock::now().time_since_epoch()).count();
}

struct Options {
    std::string host = "127.0.0.1";
    int port = 0;
    std::string path = "/v1/chat/completions";
    std::string body =
        R"({"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello"}]})";
    std::vector<std::string> headers;
    int streams = 100;
    int rounds = 1;
    int rampMs = 0;
    int expectEvents = 64;
    int timeoutS = 60;
};

enum class State { Idle, Connecting, Sending, Headers, Body, Done };
enum class BodyMode { Chunked, Length, UntilClose };
enum class ChunkState { Size, Data, DataEnd, Trailer, End };

struct Conn {
    int fd = -1;
    int roundsLeft = 0;
    State state = State::Idle;
    std::string out;
    std::size_t outOff = 0;
    std::string head;
    int status = 0;
    BodyMode mode = BodyMode::UntilClose;
    bool keepAlive = true;
    long long remaining = 0; // body bytes (Length) or chunk bytes (Chunked)
    ChunkState cs = ChunkState::Size;
    std::string line;
    double tStart = 0, tFirstEvent = 0, tLastEvent = 0;
    int events = 0;
    char prev = 0;
    std::string tail; // last bytes of the body, to find "[DONE]"
    bool sawDone = false;
};

struct Results {
    int served = 0;
    std::map<std::string, int> errors;
    std::vector<double> ttfb, gaps, spans;
};

Options opt;
Results res;
int epfd = -1;
int active = 0; // connections launched and not done
std::string request;

void fail(Conn& c, const std::string& kind);
void startRequest(Conn& c, bool fresh);

void closeConn(Conn& c) {
    if (c.fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c.fd, nullptr);
        close(c.fd);
        c.fd = -1;
    }
}

void watch(Conn& c, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = &c;
    epoll_ctl(epfd, EPOLL_CTL_MOD, c.fd, &ev);
}

bool openConn(Conn& c) {
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0)
        return false;
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(opt.port));
    inet_pton(AF_INET, opt.host.c_str(), &a.sin_addr);
    int r = connect(c.fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    if (r < 0 && errno != EINPROGRESS) {
        close(c.fd);
        c.fd = -1;
        return false;
    }
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.ptr = &c;
    epoll_ctl(epfd, EPOLL_CTL_ADD, c.fd, &ev);
    c.state = State::Connecting;
    return true;
}

// Begins the next request: on a new connection when `fresh` or the old one cannot be reused.
void startRequest(Conn& c, bool fresh) {
    c.tStart = nowMs();
    c.out = request;
    c.outOff = 0;
    c.head.clear();
    c.status = 0;
    c.mode = BodyMode::UntilClose;
    c.keepAlive = true;
    c.remaining = 0;
    c.cs = ChunkState::Size;
    c.line.clear();
    c.events = 0;
    c.prev = 0;
    c.tail.clear();
    c.sawDone = false;
    if (fresh || c.fd < 0) {
        closeConn(c);
        if (!openConn(c))
            fail(c, "connect");
        return;
    }
    c.state = State::Sending;
    watch(c, EPOLLOUT);
}

void finishStream(Conn& c, bool ok, const std::string& kind) {
    if (ok)
        ++res.served;
    else
        ++res.errors[kind];
    if (--c.roundsLeft > 0) {
        startRequest(c, !ok || !c.keepAlive);
        return;
    }
    closeConn(c);
    c.state = State::Done;
    --active;
}

void fail(Conn& c, const std::string& kind) {
    closeConn(c);
    finishStream(c, false, kind);
}

void endOfBody(Conn& c) {
    if (c.status != 200)
        finishStream(c, false, "status " + std::to_string(c.status));
    else if (c.events < opt.expectEvents || !c.sawDone)
        finishStream(c, false, "short stream");
    else
        finishStream(c, true, "");
}

// Takes decoded body bytes: finds the ends of SSE events ("\n\n") and "[DONE]".
void onBodyBytes(Conn& c, const char* p, std::size_t n, double t) {
    for (std::size_t i = 0; i < n; ++i) {
        char ch = p[i];
        if (ch == '\r')
            continue;
        if (ch == '\n' && c.prev == '\n') {
            if (c.events == 0) {
                res.ttfb.push_back(t - c.tStart);
                c.tFirstEvent = t;
            } else if (c.events <= opt.expectEvents) {
                res.gaps.push_back(t - c.tLastEvent);
                if (c.events == opt.expectEvents)
                    res.spans.push_back(t - c.tFirstEvent);
            }
            c.tLastEvent = t;
            ++c.events;
            ch = 0;
        }
        c.prev = ch;
    }
    c.tail.append(p, n);
    if (c.tail.find("[DONE]") != std::string::npos)
        c.sawDone = true;
    if (c.tail.size() > 16)
        c.tail.erase(0, c.tail.size() - 16);
}

// Decodes chunked framing; returns false once the body is complete.
bool onChunked(Conn& c, const char* p, std::size_t n, double t) {
    std::size_t i = 0;
    while (i < n) {
        switch (c.cs) {
        case ChunkState::Size:
        case ChunkState::DataEnd:
        case ChunkState::Trailer: {
            char ch = p[i++];
            if (ch != '\n') {
                c.line += ch;
                break;
            }
            std::string l = c.line;
            c.line.clear();
            if (!l.empty() && l.back() == '\r')
                l.pop_back();
            if (c.cs == ChunkState::Size) {
                c.remaining = std::strtoll(l.c_str(), nullptr, 16);
                c.cs = c.remaining == 0 ? ChunkState::Trailer : ChunkState::Data;
            } else if (c.cs == ChunkState::DataEnd) {
                c.cs = ChunkState::Size;
            } else if (l.empty()) {
                c.cs = ChunkState::End;
                return false;
            }
            break;
        }
        case ChunkState::Data: {
            std::size_t take = std::min<std::size_t>(n - i, static_cast<std::size_t>(c.remaining));
            onBodyBytes(c, p + i, take, t);
            i += take;
            c.remaining -= static_cast<long long>(take);
            if (c.remaining == 0)
                c.cs = ChunkState::DataEnd;
            break;
        }
        case ChunkState::End:
            return false;
        }
    }
    return true;
}

std::string lower(std::string s) {
    for (auto& ch : s)
        ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return s;
}

// Parses the response head once it is complete; passes on any body bytes after it.
void onHead(Conn& c, double t) {
    std::size_t end = c.head.find("\r\n\r\n");
    if (end == std::string::npos)
        return;
    std::string rest = c.head.substr(end + 4);
    std::istringstream in(c.head.substr(0, end));
    std::string line;
    std::getline(in, line);
    c.status = line.size() > 12 ? std::atoi(line.c_str() + 9) : 0;
    c.keepAlive = line.compare(0, 8, "HTTP/1.1") == 0;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r')
            line.pop_back();
        auto colon = line.find(':');
        if (colon == std::string::npos)
            continue;
        std::string k = lower(line.substr(0, colon));
        std::string v = lower(line.substr(colon + 1));
        v.erase(0, v.find_first_not_of(' '));
        if (k == "transfer-encoding" && v.find("chunked") != std::string::npos)
            c.mode = BodyMode::Chunked;
        else if (k == "content-length" && c.mode != BodyMode::Chunked) {
            c.mode = BodyMode::Length;
            c.remaining = std::atoll(v.c_str());
        } else if (k == "connection" && v.find("close") != std::string::npos)
            c.keepAlive = false;
    }
    if (c.mode == BodyMode::UntilClose)
        c.keepAlive = false;
    c.state = State::Body;
    c.head.clear();
    if (c.mode == BodyMode::Length && c.remaining == 0) {
        endOfBody(c);
        return;
    }
    if (!rest.empty()) {
        if (c.mode == BodyMode::Chunked) {
            if (!onChunked(c, rest.data(), rest.size(), t))
                endOfBody(c);
        } else {
            onBodyBytes(c, rest.data(), rest.size(), t);
            if (c.mode == BodyMode::Length) {
                c.remaining -= static_cast<long long>(rest.size());
                if (c.remaining <= 0)
                    endOfBody(c);
            }
        }
    }
}

void onReadable(Conn& c) {
    char buf[65536];
    ssize_t n = read(c.fd, buf, sizeof buf);
    double t = nowMs();
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        if (n == 0 && c.state == State::Body && c.mode == BodyMode::UntilClose) {
            closeConn(c);
            endOfBody(c);
        } else {
            fail(c, n == 0 ? "closed early" : std::string("read: ") + std::strerror(errno));
        }
        return;
    }
    if (c.state == State::Headers) {
        c.head.append(buf, static_cast<std::size_t>(n));
        onHead(c, t);
        return;
    }
    if (c.state != State::Body)
        return;
    if (c.mode == BodyMode::Chunked) {
        if (!onChunked(c, buf, static_cast<std::size_t>(n), t))
            endOfBody(c);
    } else {
        onBodyBytes(c, buf, static_cast<std::size_t>(n), t);
        if (c.mode == BodyMode::Length) {
            c.remaining -= n;
            if (c.remaining <= 0)
                endOfBody(c);
        }
    }
}

void onWritable(Conn& c) {
    if (c.state == State::Connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            fail(c, std::string("connect: ") + std::strerror(err));
            return;
        }
        c.state = State::Sending;
    }
    while (c.outOff < c.out.size()) {
        ssize_t n = write(c.fd, c.out.data() + c.outOff, c.out.size() - c.outOff);
        if (n < 0) {
            if (errno == EAGAIN)
                return;
            fail(c, std::string("write: ") + std::strerror(errno));
            return;
        }
        c.outOff += static_cast<std::size_t>(n);
    }
    c.state = State::Headers;
    watch(c, EPOLLIN | EPOLLRDHUP);
}

double percentile(std::vector<double>& v, double p) {
    if (v.empty())
        return 0;
    std::size_t i = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
}

std::string stats(std::vector<double>& v) {
    std::sort(v.begin(), v.end());
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "{\"n\":%zu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f}",
                  v.size(), percentile(v, 50), percentile(v, 90), percentile(v, 99),
                  percentile(v, 99.9), v.empty() ? 0.0 : v.back());
    return buf;
}

int usage() {
    std::fputs(
        "usage: sse-load --target HOST:PORT --streams N [--rounds R] [--ramp-ms MS] [--path P]\n"
        "                [--body-file F] [-H 'Name: value']... [--expect-events E] [--timeout-s "
        "S]\n",
        stderr);
    return 2;
}

} // namespace

int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (i + 1 >= argc)
            return usage();
        std::string v = argv[++i];
        if (a == "--target") {
            auto colon = v.rfind(':');
            opt.host = v.substr(0, colon);
            opt.port = std::atoi(v.c_str() + colon + 1);
        } else if (a == "--streams")
            opt.streams = std::atoi(v.c_str());
        else if (a == "--rounds")
            opt.rounds = std::atoi(v.c_str());
        else if (a == "--ramp-ms")
            opt.rampMs = std::atoi(v.c_str());
        else if (a == "--path")
            opt.path = v;
        else if (a == "--body-file") {
            std::ifstream f(v);
            std::stringstream s;
            s << f.rdbuf();
            opt.body = s.str();
        } else if (a == "-H")
            opt.headers.push_back(v);
        else if (a == "--expect-events")
            opt.expectEvents = std::atoi(v.c_str());
        else if (a == "--timeout-s")
            opt.timeoutS = std::atoi(v.c_str());
        else
            return usage();
    }
    if (opt.port <= 0 || opt.streams <= 0 || opt.rounds <= 0)
        return usage();
    request =
        "POST " + opt.path + " HTTP/1.1\r\nHost: " + opt.host + ":" + std::to_string(opt.port) +
        "\r\nAccept: text/event-stream\r\nContent-Type: application/json\r\nContent-Length: " +
        std::to_string(opt.body.size()) + "\r\n";
    for (const auto& h : opt.headers)
        request += h + "\r\n";
    request += "\r\n" + opt.body;

    epfd = epoll_create1(EPOLL_CLOEXEC);
    std::vector<Conn> conns(static_cast<std::size_t>(opt.streams));
    double start = nowMs();
    double deadline = start + opt.timeoutS * 1000.0;
    std::size_t launched = 0;
    std::vector<epoll_event> events(1024);
    for (;;) {
        double t = nowMs();
        while (launched < conns.size() &&
               (opt.rampMs <= 0 ||
                t - start >= static_cast<double>(launched) * opt.rampMs / opt.streams)) {
            Conn& c = conns[launched++];
            c.roundsLeft = opt.rounds;
            ++active;
            startRequest(c, true);
        }
        if ((launched == conns.size() && active == 0) || t >= deadline)
            break;
        int n = epoll_wait(epfd, events.data(), static_cast<int>(events.size()),
                           launched < conns.size() ? 1 : 50);
        for (int i = 0; i < n; ++i) {
            Conn& c = *static_cast<Conn*>(events[static_cast<std::size_t>(i)].data.ptr);
            if (c.fd < 0)
                continue;
            if (events[static_cast<std::size_t>(i)].events &
                (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                if (c.state == State::Connecting || c.state == State::Sending)
                    onWritable(c);
                else
                    onReadable(c);
            } else if (events[static_cast<std::size_t>(i)].events & EPOLLOUT) {
                onWritable(c);
            }
        }
    }
    int unfinished = 0;
    for (auto& c : conns) {
        if (c.state != State::Done && c.state != State::Idle) {
            unfinished += c.roundsLeft;
            closeConn(c);
        }
    }
    if (unfinished > 0)
        res.errors["timeout"] += unfinished;
    int errors = 0;
    std::string kinds = "{";
    for (const auto& [k, v] : res.errors) {
        errors += v;
        kinds += (kinds.size() > 1 ? "," : "") + std::string("\"") + k + "\":" + std::to_string(v);
    }
    kinds += "}";
    std::printf("{\"streams\":%d,\"rounds\":%d,\"requests\":%d,\"served\":%d,\"errors\":%d,\"error_"
                "kinds\":%s,"
                "\"seconds\":%.3f,\"ttfb_ms\":%s,\"gap_ms\":%s,\"span_ms\":%s}\n",
                opt.streams, opt.rounds, opt.streams * opt.rounds, res.served, errors,
                kinds.c_str(), (nowMs() - start) / 1000.0, stats(res.ttfb).c_str(),
                stats(res.gaps).c_str(), stats(res.spans).c_str());
    return 0;
}
