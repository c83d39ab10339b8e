// Integration harness: real processes on 127.0.0.1 (test upstream, proxy) and a ledger to check.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../support/process.hpp"
#include "trollproxy/trollproxy.hpp"

namespace harness {

// Processes and paths come from tests/support; the old names stay for the tests.
using support::buildRoot;
using support::Process;
using support::sourceRoot;
using support::tempDir;
using support::writeFile;

/// The test upstream, the proxy in front of it, and the ledger file they share.
struct Stack {
    std::string dir;
    std::string ledgerUri;
    std::unique_ptr<Process> upstream;
    std::unique_ptr<Process> proxy;
    std::unique_ptr<trollproxy::LedgerAdmin> ledger;
    int metricsPort = 0; ///< the proxy's /metrics listener

    /// `configTemplate` is a config JSON in which "UPSTREAM" is replaced by
    /// the test upstream's base URL (http://127.0.0.1:PORT).
    Stack(const std::string& configTemplate, std::map<std::string, std::string> proxyEnv = {},
          std::vector<std::string> upstreamArgs = {});

    /// Creates a user with a key and credits in each pool (USD text).
    std::string userWithKey(const std::string& name, const std::string& credits,
                            const std::string& refCredits, const std::string& creditsNew);
    trollproxy::Balance balance(const std::string& name);
};

/// A minimal HTTP/1.1 client over a raw socket, so tests control every byte.
struct RawResponse {
    int status = 0;
    std::map<std::string, std::string> headers;         // lower-case names
    std::string body;                                   // de-chunked
    std::vector<std::pair<double, std::string>> chunks; // arrival time (s) and bytes
};

/// Sends bytes, reads the whole answer (Connection: close).
RawResponse rawExchange(int port, const std::string& requestBytes, double timeoutSeconds = 30);

/// POSTs JSON with headers; returns the answer.
RawResponse post(int port, const std::string& path, const std::string& body,
                 const std::map<std::string, std::string>& headers, double timeoutSeconds = 30);
RawResponse get(int port, const std::string& path);

/// Reads a stream's first `n` bytes of body then closes the socket abruptly.
std::string postAndHangUp(int port, const std::string& path, const std::string& body,
                          const std::map<std::string, std::string>& headers, std::size_t n);

} // namespace harness
