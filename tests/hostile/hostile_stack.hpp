// Hostile-input tests: the proxy and the test upstream with the proxy's log kept,
// and the checks every case ends with (server alive, money exact, nothing free).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../integration/harness.hpp"

namespace hostile {

using trollproxy::Money;

/// One line of the proxy's request log (stderr), the fields the tests read.
struct LogLine {
    std::string requestId, user, note, raw;
    int status = 0;
    Money cost{0}, shortfall{0};
    bool hasUsage = false, estimated = false;
    std::int64_t input = 0, output = 0, cacheWrite = 0, cacheRead = 0;
};

/// What the test upstream received.
struct Seen {
    std::string path, body;
    std::vector<std::pair<std::string, std::string>> headers; ///< lower-case names
    std::string header(const std::string& name) const;
    bool has(const std::string& name) const;
};

/// The test upstream and the proxy, with the proxy's stderr in `logPath`.
/// Prices of the model "m": input 1, output 2, cache write 1.25, cache read 0.1 USD/Mtok.
struct Stack {
    std::string dir, ledgerUri, logPath;
    std::unique_ptr<harness::Process> upstream;
    std::unique_ptr<harness::Process> proxy;
    std::unique_ptr<trollproxy::LedgerAdmin> ledger;

    /// `config` as harness::Stack's ("UPSTREAM" = the test upstream's base URL);
    /// empty: the default config (models m, cheap-model, gpt-5.1).
    explicit Stack(std::string config = "", const std::string& upstreamKeys = "upstream-key-1");
    int port() const { return proxy->port(); }

    /// A user with `usd` in the creditsNew pool; returns its key.
    std::string user(const std::string& name, const std::string& usd);
    /// credits + refCredits + creditsNew.
    Money total(const std::string& name);

    std::vector<LogLine> log();
    /// The log line of a request, waiting up to 5 s for it ("" id: none).
    LogLine logFor(const std::string& requestId);
    std::vector<Seen> upstreamRequests();
    std::int64_t upstreamCount() { return static_cast<std::int64_t>(upstreamRequests().size()); }
};

/// The default config's text (forward_headers x-fake-*, default_max_output_tokens 1000).
std::string defaultConfig();

/// POST with `Authorization: Bearer key` and `more` headers.
harness::RawResponse call(Stack& s, const std::string& path, const std::string& body,
                          const std::string& key, std::map<std::string, std::string> more = {});

/// Chat and Messages bodies for model "m" (`extra` is inserted before the final brace).
std::string chatBody(bool stream, const std::string& extra = "");
std::string messagesBody(bool stream, const std::string& extra = "", int maxTokens = 256);

/// The price of a usage of model "m", in nano-USD.
Money priceM(std::int64_t in, std::int64_t out, std::int64_t cw = 0, std::int64_t cr = 0);
std::int64_t ceilDiv(std::int64_t a, std::int64_t b);
/// Characters of text the test upstream streams in `chunks` chunks ("Hello", " word1", ...).
std::int64_t streamTextChars(int chunks);

/// The amount of the hold the proxy takes for `body` on `path`, read from the
/// 402 it gives a user with no credits ("needs up to X USD"); -1 if not found.
Money probeHold(Stack& s, const std::string& path, const std::string& body);

/// Whether `body` is one JSON value (simdjson).
bool isJson(const std::string& body);
/// The error message of an OpenAI or Anthropic error body ("" if none).
std::string errorMessage(const std::string& body);
/// Case-insensitive substring test.
bool containsNoCase(const std::string& hay, const std::string& needle);

/// Checks kept across one test: the balance before, and the end-of-test checks.
class Books {
public:
    Books(Stack& s, std::string user);
    /// The server answers /health with 200; the balance decrease equals the
    /// sum of the costs logged (proxy log and ledger log alike); no balance
    /// field is negative; every 2xx log line with usage has a cost > 0.
    void check();
    Money spent();

private:
    Stack& s_;
    std::string user_;
    Money before_{0};
};

} // namespace hostile
