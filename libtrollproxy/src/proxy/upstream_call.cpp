// UpstreamCall: endpoint and key rotation, and what an upstream refusal says about a key.
#include "proxy/upstream_call.hpp"

#include <algorithm>
#include <cctype>
#include <set>

#include <simdjson.h>

#include "core/text.hpp"

namespace trollproxy::internal {

namespace {

constexpr std::int64_t kSetAsideMs = 10 * 60 * 1000;

// Whether a client header may reach the upstream: an allow-list, so that no
// header the upstream honours (routing, budgets, tags) is the client's to set.
bool forwardable(const std::string& name, const Config& cfg) {
    static const std::set<std::string> kAllowed{"content-type", "accept", "anthropic-version",
                                                "anthropic-beta", "openai-beta"};
    if (kAllowed.count(name))
        return true;
    if (name == "user-agent")
        return cfg.userAgent.empty();
    for (const std::string& allowed : cfg.settings.forwardHeaders) {
        if (allowed.back() == '*'
                ? name.compare(0, allowed.size() - 1, allowed, 0, allowed.size() - 1) == 0
                : name == allowed)
            return true;
    }
    return false;
}

std::int64_t retryAfterMs(const UpstreamTransfer& t) {
    std::string ra = t.header("retry-after");
    long long s = 0;
    for (char c : ra) {
        if (!std::isdigit(static_cast<unsigned char>(c)))
            break;
        s = s * 10 + (c - '0');
        if (s > 3600)
            break;
    }
    return (s > 0 ? std::min(s, 3600LL) : 5) * 1000;
}

// What the attempts so far have seen, to choose the failure when none served.
struct Tally {
    int attempts = 0;
    int lastStatus = 0;
    ErrorCode lastError = ErrorCode::Unavailable;
    std::int64_t soonestMs = 0; // the shortest Retry-After of a rate-limited key
    bool anyEndpoint = false;
    bool setAsideOne = false;              // one request sets aside at most one key
    std::optional<HttpResponse> forbidden; // the last 403, relayed if every key got one
};

// Applies a refusal of key `k` to its pool. A refusal that follows the request
// from key to key is about the request: at most one key is set aside.
KeyVerdict applyRefusal(KeyPool& keys, std::size_t k, const UpstreamTransfer& t,
                        const std::string& body, Tally& tally, const Clock& clock) {
    KeyVerdict verdict = keyVerdict(t.status(), body);
    if (verdict == KeyVerdict::RateLimited) {
        std::int64_t waitMs = retryAfterMs(t);
        keys.coolDown(k, clock.steadyMs() + waitMs);
        tally.soonestMs = tally.soonestMs ? std::min(tally.soonestMs, waitMs) : waitMs;
    } else if (verdict == KeyVerdict::SetAside) {
        if (!tally.setAsideOne)
            keys.setAside(k, clock.steadyMs() + kSetAsideMs);
        tally.setAsideOne = true;
    }
    return verdict;
}

Outcome failure(const UpstreamCall& call, const Tally& t) {
    if (!t.anyEndpoint)
        return call.noEndpoint;
    if (t.lastStatus == 429) {
        std::int64_t s = std::max<std::int64_t>(1, (t.soonestMs + 999) / 1000);
        return refuse(OutcomeKind::UpstreamRateLimited, "the upstream is rate limited; retry later",
                      {{"Retry-After", std::to_string(s)}});
    }
    if (t.attempts == 0 || t.lastStatus == 503)
        return refuse(OutcomeKind::UpstreamUnavailable, "no upstream key is available right now");
    if (t.lastStatus == 0 && t.lastError == ErrorCode::Timeout)
        return refuse(OutcomeKind::UpstreamTimeout, "the upstream did not answer in time");
    return refuse(OutcomeKind::UpstreamError, "the upstream failed to answer");
}

std::string urlFor(const UpstreamCall& call, const EndpointRoute& ep) {
    if (call.urlSuffix.empty())
        return ep.endpoint.baseUrl;
    return ep.endpoint.baseUrl.substr(0, ep.endpoint.baseUrl.find('?')) + call.urlSuffix;
}

bool matches(const UpstreamCall& call, const EndpointRoute& ep) {
    return ep.format == call.format && (call.upstreamName.empty() || ep.endpoint.upstream.empty() ||
                                        ep.endpoint.upstream == call.upstreamName);
}

// One refused attempt: what it says about the key, and whether to try the next.
// Returns the answer to relay when the upstream refused the request itself.
std::optional<HttpResponse> judge(const EndpointRoute& ep, std::size_t k,
                                  std::unique_ptr<UpstreamTransfer> t, Tally& tally,
                                  Metrics& metrics, const Clock& clock) {
    int status = t->status();
    std::string body;
    (void)readAll(*t, body);
    metrics.add(
        Metrics::series("trollproxy_upstream_errors_total",
                        {{"endpoint", ep.endpoint.name}, {"kind", std::to_string(status)}}));
    switch (applyRefusal(*ep.keys, k, *t, body, tally, clock)) {
    case KeyVerdict::RateLimited:
        tally.lastStatus = 429;
        return std::nullopt;
    case KeyVerdict::SetAside:
        tally.lastStatus = 503;
        return std::nullopt;
    case KeyVerdict::NextKey:
        tally.forbidden = relayAnswer(*t, status, redactKeys(std::move(body), *ep.keys));
        tally.lastStatus = status;
        return std::nullopt;
    case KeyVerdict::Fine:
        break;
    }
    if (status >= 500) {
        tally.lastStatus = 502;
        return std::nullopt;
    }
    return relayAnswer(*t, status, redactKeys(std::move(body), *ep.keys));
}

} // namespace

HeaderList upstreamHeaders(const HeaderList& client, ApiFormat format, const Config& cfg,
                           const std::string& key) {
    HeaderList out;
    bool hasVersion = false;
    bool hasType = false;
    for (const auto& [k, v] : client) {
        std::string l = asciiLower(k);
        if (!forwardable(l, cfg))
            continue;
        hasVersion |= l == "anthropic-version";
        hasType |= l == "content-type";
        out.emplace_back(k, v);
    }
    out.emplace_back("Authorization", "Bearer " + key);
    if (format == ApiFormat::Anthropic && !hasVersion)
        out.emplace_back("anthropic-version", "2023-06-01");
    if (!cfg.userAgent.empty())
        out.emplace_back("User-Agent", cfg.userAgent);
    if (!hasType)
        out.emplace_back("Content-Type", "application/json");
    return out;
}

// An upstream error body with every key of the pool replaced, so that an
// upstream echoing its credentials cannot leak them to a client.
std::string redactKeys(std::string body, const KeyPool& keys) {
    for (std::size_t i = 0; i < keys.size(); ++i) {
        const std::string& k = keys.key(i);
        if (k.size() < 4)
            continue;
        for (std::size_t p = body.find(k); p != std::string::npos; p = body.find(k, p + 10))
            body.replace(p, k.size(), "[redacted]");
    }
    return body;
}

Result<void> readAll(UpstreamTransfer& t, std::string& body) {
    for (;;) {
        auto more = t.read(body);
        if (!more)
            return more.error();
        if (!*more)
            return {};
        if (body.size() > kMaxUpstreamBody)
            return Error{ErrorCode::InvalidArgument, "upstream answer too large"};
    }
}

HttpResponse relayAnswer(const UpstreamTransfer& t, int status, std::string body) {
    HttpResponse r;
    r.status = status;
    r.body = std::move(body);
    std::string ct = t.header("content-type");
    r.contentType = ct.empty() ? "application/json" : ct;
    return r;
}

// Decided on structured signals only (status, and the error object's type or
// code), never on free text, which a client can influence (an upstream echoing
// a bad value). 403 (no access to this model) tries the next key.
KeyVerdict keyVerdict(int status, const std::string& body) {
    if (status == 401 || status == 402)
        return KeyVerdict::SetAside;
    if (status == 403)
        return KeyVerdict::NextKey;
    const KeyVerdict otherwise = status == 429 ? KeyVerdict::RateLimited : KeyVerdict::Fine;
    if (status != 400 && status != 429)
        return KeyVerdict::Fine;
    thread_local simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (parser.parse(body).get(doc))
        return otherwise;
    simdjson::dom::element error;
    if (doc["error"].get(error) || !error.is_object())
        return otherwise;
    std::string_view type, code;
    if (error["type"].get_string().get(type))
        type = {};
    if (error["code"].get_string().get(code))
        code = {};
    // LiteLLM: a key's budget (400, type budget_exceeded); OpenAI: quota
    // (429, insufficient_quota); Anthropic: billing_error.
    for (std::string_view v : {type, code}) {
        if (v == "budget_exceeded" || v == "insufficient_quota" || v == "billing_error")
            return KeyVerdict::SetAside;
    }
    return otherwise;
}

UpstreamAttempt callUpstream(const UpstreamCall& call, Upstream& upstream, Metrics& metrics,
                             const Clock& clock) {
    Tally tally;
    const Config& cfg = *call.routing->config;
    for (const EndpointRoute& ep : call.routing->endpoints) {
        if (!matches(call, ep))
            continue;
        tally.anyEndpoint = true;
        for (std::size_t k : ep.keys->usable(clock.steadyMs())) {
            if (++tally.attempts > call.maxAttempts)
                break;
            UpstreamRequest req{
                urlFor(call, ep),
                upstreamHeaders(*call.clientHeaders, call.format, cfg, ep.keys->key(k)),
                call.method == "GET" ? std::string() : call.body, call.method};
            auto started = upstream.start(req);
            if (!started) { // connect failure or timeout: next key or endpoint
                tally.lastError = started.error().code;
                tally.lastStatus = 0;
                metrics.add(Metrics::series(
                    "trollproxy_upstream_errors_total",
                    {{"endpoint", ep.endpoint.name}, {"kind", errorCodeName(tally.lastError)}}));
                continue;
            }
            if ((*started)->status() >= 200 && (*started)->status() < 300)
                return {std::move(*started), std::nullopt, {}};
            if (auto relayed = judge(ep, k, std::move(*started), tally, metrics, clock))
                return {nullptr, std::move(relayed), {}};
        }
    }
    // Every key was refused access (403): the client sees the upstream's answer.
    if (tally.forbidden && tally.lastStatus == tally.forbidden->status)
        return {nullptr, std::move(tally.forbidden), {}};
    return {nullptr, std::nullopt, failure(call, tally)};
}

} // namespace trollproxy::internal
