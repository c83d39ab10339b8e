// Starts and stops nginx for the end-to-end test, from an adapted copy of configs/nginx/nginx.conf.
#include "nginx_runner.hpp"

#include <arpa/inet.h>
#include <cstdlib>
#include <netinet/in.h>
#include <stdexcept>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "harness.hpp"

namespace e2e {

namespace {

bool executable(const std::string& path) {
    return ::access(path.c_str(), X_OK) == 0;
}

int freePort() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        ::close(fd);
        throw std::runtime_error("cannot find a free port");
    }
    ::close(fd);
    return ntohs(addr.sin_port);
}

} // namespace

std::string findNginx() {
    if (const char* env = std::getenv("TROLLPROXY_NGINX"); env && *env)
        return executable(env) ? env : "";
    std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
    path += ":/usr/sbin:/sbin";
    for (std::size_t p = 0; p <= path.size();) {
        std::size_t e = path.find(':', p);
        if (e == std::string::npos)
            e = path.size();
        std::string candidate = path.substr(p, e - p) + "/nginx";
        if (e > p && executable(candidate))
            return candidate;
        p = e + 1;
    }
    return "";
}

std::string substituteAll(std::string text,
                          const std::map<std::string, std::string>& replacements) {
    for (const auto& [from, to] : replacements) {
        std::size_t count = 0;
        for (std::size_t p = text.find(from); p != std::string::npos;
             p = text.find(from, p + to.size())) {
            text.replace(p, from.size(), to);
            ++count;
        }
        if (count == 0)
            throw std::runtime_error("configs/nginx/nginx.conf no longer contains \"" + from +
                                     "\"");
    }
    return text;
}

Nginx::Nginx(const std::string& dir, int openhandsPort, int ohmygptPort) {
    std::string binary = findNginx();
    if (binary.empty())
        throw std::runtime_error("nginx is not installed");
    // Workers drop to `nobody` when the test runs as root: let them reach the files.
    ::chmod(dir.c_str(), 0755);
    std::string original = support::readFile(harness::sourceRoot() + "/configs/nginx/nginx.conf");
    for (int attempt = 0; attempt < 5; ++attempt) {
        int port = freePort();
        // Ports and upstream addresses, and the run paths an unprivileged nginx needs.
        config_ = substituteAll(
            original,
            {
                {"goproxy-openhands:8004", "127.0.0.1:" + std::to_string(openhandsPort)},
                {"goproxy-ohmygpt:8005", "127.0.0.1:" + std::to_string(ohmygptPort)},
                {"listen 80", "listen 127.0.0.1:" + std::to_string(port)},
                {"pid /var/run/nginx.pid;", "pid " + dir + "/nginx.pid;"},
                {"/var/log/nginx/", dir + "/"},
                {"http {",
                 "http {\n    client_body_temp_path " + dir + "/body;\n    proxy_temp_path " + dir +
                     "/proxy;\n    fastcgi_temp_path " + dir + "/fastcgi;\n    uwsgi_temp_path " +
                     dir + "/uwsgi;\n    scgi_temp_path " + dir + "/scgi;\n"},
            });
        harness::writeFile(dir + "/nginx.conf", config_);
        if (start(binary, dir, port))
            return;
    }
    throw std::runtime_error("nginx did not start; error log:\n" +
                             support::readFile(dir + "/error.log"));
}

bool Nginx::start(const std::string& binary, const std::string& dir, int port) {
    process_ = std::make_unique<support::Process>(
        std::vector<std::string>{binary, "-p", dir + "/", "-e", dir + "/error.log", "-c",
                                 dir + "/nginx.conf", "-g", "daemon off;"},
        std::map<std::string, std::string>{},
        support::Process::Options{.stderrPath = {}, .awaitListening = false});
    // An exit means most likely that the port was taken meanwhile.
    if (process_->waitForPort(port, 10)) {
        port_ = port;
        return true;
    }
    stop();
    return false;
}

void Nginx::stop() {
    if (process_)
        process_->stop(5); // SIGTERM: fast shutdown, the master stops its workers
    process_.reset();
}

Nginx::~Nginx() {
    stop();
}

} // namespace e2e
