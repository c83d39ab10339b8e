// A GuardedServer client connection: socket, buffered input, and httplib's stream over it.
#include "connection.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace trollproxy::server {

namespace {

void addressOf(int fd, bool peer, std::string& ip, int& port) {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    int r = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                 : ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    if (r != 0)
        return;
    char text[INET6_ADDRSTRLEN] = "";
    if (addr.ss_family == AF_INET) {
        auto* a = reinterpret_cast<sockaddr_in*>(&addr);
        ::inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
        port = ntohs(a->sin_port);
    } else if (addr.ss_family == AF_INET6) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
        ::inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
        port = ntohs(a->sin6_port);
    }
    ip = text;
}

} // namespace

bool waitFor(int fd, short events, int timeoutMs) {
    pollfd p{fd, events, 0};
    int r;
    do {
        r = ::poll(&p, 1, timeoutMs);
    } while (r < 0 && errno == EINTR);
    return r > 0;
}

bool inputPending(int fd) {
    char b;
    ssize_t n = ::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0;
}

void sendBestEffort(int fd, const std::string& bytes) {
    (void)::send(fd, bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
}

std::atomic<std::size_t> GuardedServer::Connection::open{0};

GuardedServer::Connection::Connection(int s) : fd(s) {
    ++open;
}

GuardedServer::Connection::~Connection() {
    ::close(fd);
    --open;
}

void GuardedServer::Connection::nextRequest() {
    buf.erase(0, off);
    off = 0;
    head = HeadScan{};
    if (buf.empty())
        std::string().swap(buf); // idle connections keep no read buffer
}

ssize_t GuardedServer::Connection::readNow() {
    char chunk[kReadChunk];
    ssize_t n = ::recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        return -1;
    if (n < 0)
        return 0;
    buf.append(chunk, static_cast<std::size_t>(n));
    return n;
}

bool GuardedServer::ConnectionStream::is_readable() const {
    return c_.off < c_.buf.size() || waitFor(c_.fd, POLLIN, readMs_);
}

bool GuardedServer::ConnectionStream::is_writable() const {
    if (!waitFor(c_.fd, POLLOUT, writeMs_))
        return false;
    // Gone when the peer closed: readable with nothing to read.
    pollfd p{c_.fd, POLLIN, 0};
    return ::poll(&p, 1, 0) == 0 || inputPending(c_.fd);
}

ssize_t GuardedServer::ConnectionStream::read(char* ptr, std::size_t size) {
    if (endOfInput && c_.consumed >= *endOfInput)
        return 0;
    if (c_.off == c_.buf.size()) {
        c_.buf.clear();
        c_.off = 0;
        if (!waitFor(c_.fd, POLLIN, readMs_))
            return -1;
        c_.buf.resize(kReadChunk);
        ssize_t n;
        do {
            n = ::recv(c_.fd, c_.buf.data(), kReadChunk, 0);
        } while (n < 0 && errno == EINTR);
        c_.buf.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
        if (n <= 0)
            return n;
    }
    std::size_t n = std::min(size, c_.buf.size() - c_.off);
    if (endOfInput)
        n = static_cast<std::size_t>(std::min<std::uint64_t>(n, *endOfInput - c_.consumed));
    std::memcpy(ptr, c_.buf.data() + c_.off, n);
    c_.off += n;
    c_.consumed += n;
    return static_cast<ssize_t>(n);
}

ssize_t GuardedServer::ConnectionStream::write(const char* ptr, std::size_t size) {
    if (!waitFor(c_.fd, POLLOUT, writeMs_))
        return -1;
    ssize_t n;
    do {
        n = ::send(c_.fd, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
}

void GuardedServer::ConnectionStream::get_remote_ip_and_port(std::string& ip, int& port) const {
    addressOf(c_.fd, true, ip, port);
}

void GuardedServer::ConnectionStream::get_local_ip_and_port(std::string& ip, int& port) const {
    addressOf(c_.fd, false, ip, port);
}

} // namespace trollproxy::server
