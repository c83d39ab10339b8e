// Starts the production deployment for the end-to-end test, from the repository's own config files.
#include "deployment.hpp"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unistd.h>

#include "../support/users.hpp"

namespace e2e {

namespace {

const char* kProductionUpstream = "https://llm-proxy.app.all-hands.dev";

std::string readFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot read " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

trollproxy::Config loadConfig(const std::string& path) {
    auto cfg = trollproxy::loadConfigFile(path);
    if (!cfg)
        throw std::runtime_error(cfg.error().message);
    return *cfg;
}

// A copy of a production config whose endpoints point at the test upstream.
std::string pointAtUpstream(const std::string& sourcePath, const std::string& dir,
                            int upstreamPort) {
    std::map<std::string, std::string> repl{
        {kProductionUpstream, "http://127.0.0.1:" + std::to_string(upstreamPort)}};
    std::string text = substituteAll(readFile(sourcePath), repl);
    // The test upstream is steered by x-fake-* request headers, which the
    // production configs do not forward.
    text.insert(text.find('{') + 1, "\n  \"trollproxy\": {\"forward_headers\": [\"x-fake-*\"]},");
    std::string out = dir + "/" + sourcePath.substr(sourcePath.rfind('/') + 1);
    harness::writeFile(out, text);
    return out;
}

} // namespace

bool mongoVariant() {
    const char* v = std::getenv("TROLLPROXY_E2E_LEDGER");
    return v && std::string(v) == "mongo";
}

std::string missingTool() {
    if (findNginx().empty())
        return "nginx is not installed (apt-get install nginx-light)";
    if (mongoVariant() && !std::getenv("TROLLPROXY_TEST_LEDGER_URI"))
        return "no MongoDB-protocol server (run through tests/mongo/run.sh)";
    return "";
}

std::string userName(const std::string& stem) {
    const char* oid = std::getenv("TROLLPROXY_TEST_OBJECTID_IDS");
    if (oid && *oid == '1')
        return "oid:" + trollproxy::newApiKey().substr(12, 24);
    return stem + "-" + trollproxy::newApiKey().substr(12, 8);
}

Deployment::Deployment() {
    dir = harness::tempDir();
    const std::string root = harness::sourceRoot();
    const std::string chatPath = root + "/configs/config-openhands-prod.json";
    const std::string chat2Path = root + "/configs/config-ohmygpt-prod.json";
    chatConfig = loadConfig(chatPath);
    chat2Config = loadConfig(chat2Path);

    ledgerUri =
        mongoVariant() ? std::getenv("TROLLPROXY_TEST_LEDGER_URI") : "sqlite:" + dir + "/ledger.db";
    auto opened = trollproxy::openLedgerAdmin(ledgerUri);
    if (!opened)
        throw std::runtime_error("ledger " + ledgerUri + ": " + opened.error().message);
    ledger = std::move(*opened);

    upstream =
        std::make_unique<harness::Process>(support::fakeUpstreamArgv({"--keys", kUpstreamKey}));
    auto startProxy = [&](const std::string& configPath, const std::string& name) {
        std::string cfg = pointAtUpstream(configPath, dir, upstream->port());
        return std::make_unique<harness::Process>(
            std::vector<std::string>{harness::buildRoot() + "/server/trollproxy", "--config", cfg,
                                     "--ledger", ledgerUri, "--listen", "127.0.0.1:0", "--journal",
                                     dir + "/" + name + ".journal"},
            std::map<std::string, std::string>{{"TROLLPROXY_UPSTREAM_KEYS", kUpstreamKey}});
    };
    chat = startProxy(chatPath, "chat");
    chat2 = startProxy(chat2Path, "chat2");
    nginx = std::make_unique<Nginx>(dir, chat->port(), chat2->port());
}

Deployment::~Deployment() {
    nginx.reset(); // first: it holds connections to the proxies
    chat.reset();
    chat2.reset();
    upstream.reset();
    ledger.reset();
}

std::string Deployment::user(const std::string& name, const std::string& credits,
                             const std::string& refCredits, const std::string& creditsNew) {
    return support::addUserWithKey(*ledger, name, credits, refCredits, creditsNew);
}

trollproxy::Balance Deployment::balance(const std::string& name) {
    return support::balanceOf(*ledger, name);
}

Deployment& deployment() {
    static Deployment d;
    return d;
}

harness::RawResponse viaNginx(const std::string& host, const std::string& method,
                              const std::string& path, const std::string& body,
                              const std::map<std::string, std::string>& headers,
                              double timeoutSeconds) {
    std::string r =
        method + " " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n";
    for (const auto& [k, v] : headers)
        r += k + ": " + v + "\r\n";
    if (method == "POST")
        r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\n";
    return harness::rawExchange(deployment().nginx->port(), r + "\r\n" + body, timeoutSeconds);
}

} // namespace e2e
