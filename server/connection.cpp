// A GuardedServer client connection: socket, buffered input, and httplib's stream over it.
#include "connection.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
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

// One poll for room and for the peer's state, the usual answer; a full socket is
// waited on, then looked at again.
bool GuardedServer::ConnectionStream::is_writable() const {
    pollfd p{c_.fd, POLLOUT | POLLIN, 0};
    int r = ::poll(&p, 1, 0);
    if (r == 0) {
        if (!waitFor(c_.fd, POLLOUT, writeMs_))
            return false;
        p = {c_.fd, POLLOUT | POLLIN, 0};
        r = ::poll(&p, 1, 0);
    }
    if (r <= 0 || (p.revents & (POLLERR | POLLHUP | POLLNVAL)))
        return false;
    // Gone when the peer closed: readable with nothing to read.
    if ((p.revents & POLLIN) && !inputPending(c_.fd))
        return false;
    return (p.revents & POLLOUT) != 0 || waitFor(c_.fd, POLLOUT, writeMs_);
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
    if (holdNext_) {
        holdNext_ = false;
        held_.assign(ptr, size);
        return static_cast<ssize_t>(size);
    }
    return sendAll(ptr, size) ? static_cast<ssize_t>(size) : -1;
}

bool GuardedServer::ConnectionStream::flush() {
    holdNext_ = false;
    return held_.empty() || sendAll(nullptr, 0);
}

// The socket is tried first and waited on only when it is full.
bool GuardedServer::ConnectionStream::sendAll(const char* ptr, std::size_t size) {
    iovec parts[2] = {{held_.data(), held_.size()}, {const_cast<char*>(ptr), size}};
    std::size_t first = held_.empty() ? 1 : 0;
    const std::size_t count = size == 0 ? 1 : 2;
    while (first < count) {
        msghdr msg{};
        msg.msg_iov = parts + first;
        msg.msg_iovlen = count - first;
        ssize_t n = ::sendmsg(c_.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!waitFor(c_.fd, POLLOUT, writeMs_))
                return false;
            continue;
        }
        if (n < 0)
            return false;
        for (auto left = static_cast<std::size_t>(n); first < count && left > 0;) {
            std::size_t take = std::min(left, parts[first].iov_len);
            parts[first].iov_base = static_cast<char*>(parts[first].iov_base) + take;
            parts[first].iov_len -= take;
            left -= take;
            if (parts[first].iov_len == 0)
                ++first;
        }
    }
    held_.clear();
    return true;
}

void GuardedServer::ConnectionStream::get_remote_ip_and_port(std::string& ip, int& port) const {
    if (c_.peerPort < 0)
        addressOf(c_.fd, true, c_.peerIp, c_.peerPort);
    ip = c_.peerIp;
    port = c_.peerPort;
}

void GuardedServer::ConnectionStream::get_local_ip_and_port(std::string& ip, int& port) const {
    if (c_.localPort < 0)
        addressOf(c_.fd, false, c_.localIp, c_.localPort);
    ip = c_.localIp;
    port = c_.localPort;
}

} // namespace trollproxy::server
