// Runs Debian's nginx with the repository's nginx.conf, adapted only in ports, upstream addresses
// and run paths.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "../support/process.hpp"

namespace e2e {

/// The nginx binary: $TROLLPROXY_NGINX, else `nginx` on PATH, /usr/sbin or /sbin; "" when none.
std::string findNginx();

/// nginx.conf text with every `from` replaced by `to`; throws when a `from` does not occur,
/// so a changed production file cannot silently leave the test running something else.
std::string substituteAll(std::string text, const std::map<std::string, std::string>& replacements);

/// An nginx master process on 127.0.0.1 running configs/nginx/nginx.conf, with
/// `goproxy-openhands:8004` and `goproxy-ohmygpt:8005` pointed at local ports and
/// pid, logs and temp files in `dir`. Stopped (SIGTERM, then SIGKILL) on destruction.
class Nginx {
public:
    Nginx(const std::string& dir, int openhandsPort, int ohmygptPort);
    ~Nginx();
    Nginx(const Nginx&) = delete;
    Nginx& operator=(const Nginx&) = delete;

    int port() const { return port_; }
    /// The adapted configuration nginx runs.
    const std::string& configText() const { return config_; }

private:
    bool start(const std::string& binary, const std::string& dir, int port);
    void stop();

    std::unique_ptr<support::Process> process_;
    int port_ = 0;
    std::string config_;
};

} // namespace e2e
