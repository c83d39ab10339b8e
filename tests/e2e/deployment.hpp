// The production deployment on one machine: nginx, both trollproxy processes, one ledger, a test
// upstream.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "harness.hpp"
#include "nginx_runner.hpp"
#include "trollproxy/trollproxy.hpp"

namespace e2e {

inline constexpr const char* kChatHost = "chat.trollllm.xyz";
inline constexpr const char* kChat2Host = "chat2.trollllm.xyz";
inline constexpr const char* kUpstreamKey = "upstream-key-e2e";

/// True when TROLLPROXY_E2E_LEDGER=mongo: the ledger is $TROLLPROXY_TEST_LEDGER_URI, a
/// MongoDB-protocol server started by tests/mongo/run.sh; else an SQLite file.
bool mongoVariant();
/// Why this variant cannot run here ("" when it can).
std::string missingTool();
/// A fresh user name; "oid:<24 hex>" when the server stores only ObjectId ids
/// (TROLLPROXY_TEST_OBJECTID_IDS=1, CongoDB).
std::string userName(const std::string& stem);

/// Two trollproxy processes started with configs/config-openhands-prod.json (chat)
/// and configs/config-ohmygpt-prod.json (chat2), their base URLs pointed at the
/// test upstream, one shared ledger, and nginx with configs/nginx/nginx.conf.
struct Deployment {
    std::string dir;
    std::string ledgerUri;
    std::unique_ptr<trollproxy::LedgerAdmin> ledger;
    std::unique_ptr<harness::Process> upstream;
    std::unique_ptr<harness::Process> chat;
    std::unique_ptr<harness::Process> chat2;
    std::unique_ptr<Nginx> nginx;
    trollproxy::Config chatConfig;  ///< the production file as loaded
    trollproxy::Config chat2Config; ///< the production file as loaded

    Deployment();
    ~Deployment();

    /// Creates a user with a key and credits in each pool (USD text).
    std::string user(const std::string& name, const std::string& credits,
                     const std::string& refCredits, const std::string& creditsNew);
    trollproxy::Balance balance(const std::string& name);
};

/// The deployment, started on first use and stopped at exit.
Deployment& deployment();

/// Sends a request to nginx with the given Host header (Connection: close).
harness::RawResponse viaNginx(const std::string& host, const std::string& method,
                              const std::string& path, const std::string& body,
                              const std::map<std::string, std::string>& headers,
                              double timeoutSeconds = 30);

} // namespace e2e
