// Forwarding: tries endpoints and keys in order, then answers whole or as a stream, and bills.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <optional>
#include <set>

#include <simdjson.h>

#include "core/json_locate.hpp"
#include "core/json_writer.hpp"
#include "proxy/api_errors.hpp"
#include "proxy/proxy_service.hpp"
#include "trollproxy/pricing.hpp"
#include "trollproxy/sse.hpp"

namespace trollproxy::internal {

namespace {

constexpr std::size_t kMaxUpstreamBody = 64 * 1024 * 1024;
constexpr std::int64_t kSetAsideMs = 10 * 60 * 1000;
constexpr int kMaxAttempts = 8;

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

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

} // namespace

HeaderList upstreamHeaders(const RequestContext& ctx, const std::string& key) {
    const Config& cfg = *ctx.routing->config;
    HeaderList out;
    bool hasVersion = false;
    bool hasType = false;
    for (const auto& [k, v] : ctx.http->headers) {
        std::string l = lower(k);
        if (!forwardable(l, cfg))
            continue;
        hasVersion |= l == "anthropic-version";
        hasType |= l == "content-type";
        out.emplace_back(k, v);
    }
    out.emplace_back("Authorization", "Bearer " + key);
    if (ctx.format == ApiFormat::Anthropic && !hasVersion)
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

// Reads the rest of a transfer into `body`, up to a bound.
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

namespace {

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

} // namespace

KeyVerdict applyRefusal(KeyPool& keys, std::size_t k, const UpstreamTransfer& t,
                        const std::string& body, bool& setAsideOne, std::int64_t& waitMs) {
    KeyVerdict verdict = keyVerdict(t.status(), body);
    if (verdict == KeyVerdict::RateLimited) {
        waitMs = retryAfterMs(t);
        keys.coolDown(k, steadyMs() + waitMs);
    } else if (verdict == KeyVerdict::SetAside) {
        // One request sets aside at most one key: a refusal that follows the
        // request from key to key is about the request.
        if (!setAsideOne)
            keys.setAside(k, steadyMs() + kSetAsideMs);
        setAsideOne = true;
    }
    return verdict;
}

namespace {

std::int64_t ceilDiv(std::int64_t a, std::int64_t b) {
    return (a + b - 1) / b;
}

// Why a whole answer's usage was not believed, for the log.
std::string usageNote(const Error& e) {
    switch (e.code) {
    case ErrorCode::InvalidArgument:
        return "upstream " + e.message + "; usage estimated";
    case ErrorCode::ParseError:
        return "the answer could not be read as JSON (invalid usage?); usage estimated";
    default:
        return "no usage in the answer; usage estimated";
    }
}

// The usage when nothing believable was reported: input from the request's
// bytes, output from what was served (4 bytes or characters a token).
Usage estimatedUsage(const RequestContext& ctx, std::int64_t outputChars) {
    Usage u;
    u.uncachedInput = ceilDiv(ctx.promptBytes, 4);
    u.output = ceilDiv(outputChars, 4);
    u.estimated = true;
    return u;
}

// Usage for a stream that ended early or whose usage was not final: what was
// reported, plus the text served after it; never less than the text served.
Usage partialUsage(const RequestContext& ctx, const StreamUsage& su) {
    if (!su.reported() || su.invalid())
        return estimatedUsage(ctx, su.textChars());
    Usage u = su.usage();
    // Usage seen before any content counted none of it (Anthropic's
    // message_start): the text served stands alone. Usage seen after some
    // content counted that part: the text after it is added.
    bool beforeContent = su.charsAfterUsage() == su.textChars();
    u.output = beforeContent ? std::max(u.output, ceilDiv(su.textChars(), 4))
                             : std::max(u.output + ceilDiv(su.charsAfterUsage(), 4),
                                        ceilDiv(su.textChars(), 4));
    u.estimated = true;
    return u;
}

// The upstream's refusal of the request, as the client gets it.
HttpResponse relayRefusal(const UpstreamTransfer& t, int status, std::string body) {
    HttpResponse r;
    r.status = status;
    r.body = std::move(body);
    std::string ct = t.header("content-type");
    r.contentType = ct.empty() ? "application/json" : ct;
    return r;
}

} // namespace

HttpResponse ProxyServiceImpl::forward(RequestContext& ctx) {
    std::string body = rewriteForUpstream(ctx.format, ctx.http->body, ctx.request, ctx.model->upstreamModelId);

    int attempts = 0;
    int lastStatus = 0;
    ErrorCode lastError = ErrorCode::Unavailable;
    std::int64_t soonest = 0;
    bool anyEndpoint = false;
    bool setAsideOne = false;
    std::optional<HttpResponse> refused;
    for (const EndpointRoute& ep : ctx.routing->endpoints) {
        if (ep.format != ctx.format)
            continue;
        if (!ep.endpoint.upstream.empty() && ep.endpoint.upstream != ctx.model->upstream)
            continue;
        anyEndpoint = true;
        for (std::size_t k : ep.keys->usable(steadyMs())) {
            if (++attempts > kMaxAttempts)
                break;
            UpstreamRequest req{ep.endpoint.baseUrl, upstreamHeaders(ctx, ep.keys->key(k)), body};
            auto started = upstream().start(req);
            if (!started) {
                lastError = started.error().code;
                lastStatus = 0;
                metrics().add(Metrics::series("trollproxy_upstream_errors_total",
                                              {{"endpoint", ep.endpoint.name}, {"kind", errorCodeName(lastError)}}));
                continue; // connect failure or timeout: next key or endpoint
            }
            std::unique_ptr<UpstreamTransfer> t = std::move(*started);
            int status = t->status();
            if (status >= 200 && status < 300)
                return ctx.request.stream ? streamAnswer(ctx, std::move(t)) : wholeAnswer(ctx, *t);

            std::string errBody;
            (void)readAll(*t, errBody);
            metrics().add(Metrics::series("trollproxy_upstream_errors_total",
                                          {{"endpoint", ep.endpoint.name}, {"kind", std::to_string(status)}}));
            std::int64_t wait = 0;
            KeyVerdict verdict = applyRefusal(*ep.keys, k, *t, errBody, setAsideOne, wait);
            if (verdict == KeyVerdict::RateLimited) {
                soonest = soonest ? std::min(soonest, wait) : wait;
                lastStatus = 429;
                continue;
            }
            if (verdict == KeyVerdict::SetAside) {
                lastStatus = 503;
                continue;
            } else if (verdict == KeyVerdict::NextKey) {
                refused = relayRefusal(*t, status, redactKeys(std::move(errBody), *ep.keys));
                lastStatus = status;
                continue;
            }
            if (status >= 500) {
                lastStatus = 502;
                continue;
            }
            // The upstream refused the request itself: the client should see why.
            releaseHold(ctx);
            finishLog(ctx, status, nullptr, nullptr, "upstream refused the request");
            return relayRefusal(*t, status, redactKeys(std::move(errBody), *ep.keys));
        }
    }
    if (refused && lastStatus == refused->status) {
        // Every key was refused access (403): the client sees the upstream's answer.
        releaseHold(ctx);
        finishLog(ctx, refused->status, nullptr, nullptr, "upstream refused the request");
        return std::move(*refused);
    }
    releaseHold(ctx);
    HttpResponse r;
    if (!anyEndpoint) {
        r = apiError(ctx.format, 404, "model \"" + ctx.request.model + "\" is not served on " + ctx.route,
                     "model_not_found");
    } else if (lastStatus == 429) {
        r = apiError(ctx.format, 429, "the upstream is rate limited; retry later", "upstream_rate_limited");
        r.headers.emplace_back("Retry-After", std::to_string(std::max<std::int64_t>(1, ceilDiv(soonest, 1000))));
    } else if (attempts == 0 || lastStatus == 503) {
        r = apiError(ctx.format, 503, "no upstream key is available right now", "upstream_unavailable");
    } else if (lastStatus == 0 && lastError == ErrorCode::Timeout) {
        r = apiError(ctx.format, 504, "the upstream did not answer in time", "upstream_timeout");
    } else {
        r = apiError(ctx.format, 502, "the upstream failed to answer", "upstream_error");
    }
    finishLog(ctx, r.status, nullptr, nullptr, "upstream failed");
    return r;
}

HttpResponse ProxyServiceImpl::wholeAnswer(RequestContext& ctx, UpstreamTransfer& t) {
    std::string body;
    if (auto r = readAll(t, body); !r) {
        releaseHold(ctx);
        finishLog(ctx, 502, nullptr, nullptr, "upstream answer broke");
        return apiError(ctx.format, 502, "the upstream answer broke off: " + r.error().message, "upstream_error");
    }
    auto reported = usageFromBody(ctx.format, body);
    if (ctx.format == ApiFormat::Responses)
        ctx.responseId = responseIdFromBody(body);
    Usage usage;
    std::string note;
    if (reported) {
        usage = *reported;
    } else {
        // Missing or unbelievable usage: never free once the answer is served.
        usage = estimatedUsage(ctx, static_cast<std::int64_t>(body.size()));
        note = usageNote(reported.error());
    }
    Billed billed = bill(ctx, usage, t.status());
    if (!billed.recorded) {
        finishLog(ctx, 503, &usage, nullptr, "charge could not be recorded; answer withheld");
        return apiError(ctx.format, 503, "billing is temporarily unavailable; retry later", "ledger_unavailable");
    }
    if (billed.capped)
        note += note.empty() ? "charge capped by the client's limit"
                             : "; charge capped by the client's limit";
    finishLog(ctx, t.status(), &billed.usage, &billed, note);
    HttpResponse r;
    r.status = t.status();
    std::string ct = t.header("content-type");
    r.contentType = ct.empty() ? "application/json" : ct;
    r.body = std::move(body);
    r.headers.emplace_back("x-trollproxy-cost", billed.charged.toString());
    if (billed.shortfall.nanos > 0)
        r.headers.emplace_back("x-trollproxy-shortfall", billed.shortfall.toString());
    return r;
}

HttpResponse ProxyServiceImpl::streamAnswer(RequestContext& ctx, std::unique_ptr<UpstreamTransfer> t) {
    HttpResponse r;
    r.status = t->status();
    std::string ct = t->header("content-type");
    r.contentType = ct.empty() ? "text/event-stream" : ct;
    r.headers.emplace_back("Cache-Control", "no-cache");
    bool isSse = ct.empty() || lower(ct).find("text/event-stream") != std::string::npos;
    // The stream function owns the transfer; if it is never run the hold is
    // released by the guard (nothing was served).
    struct Guard {
        ProxyServiceImpl* self = nullptr;
        RequestContext ctx;
        std::unique_ptr<UpstreamTransfer> transfer;
        bool done = false;
        ~Guard() {
            if (!done)
                self->releaseHold(ctx);
        }
    };
    auto g = std::make_shared<Guard>();
    g->self = this;
    g->ctx = ctx;
    g->ctx.http = nullptr; // the request object does not outlive handle()
    g->transfer = std::move(t);
    r.stream = [g, isSse](ResponseWriter& w) {
        g->done = true;
        // The same catch-all as handle(): an exception must not take the server
        // down. The hold stays until the sweep returns it (nothing is settled).
        try {
            g->self->pumpStream(g->ctx, *g->transfer, w, isSse);
        } catch (const std::exception& e) {
            std::fprintf(stderr,
                         "{\"level\":\"error\",\"msg\":\"stream "
                         "failed\",\"request_id\":\"%s\",\"error\":%s}\n",
                         g->ctx.requestId.c_str(), jsonQuote(e.what()).c_str());
        }
    };
    return r;
}

void ProxyServiceImpl::pumpStream(RequestContext& ctx, UpstreamTransfer& t, ResponseWriter& w, bool isSse) {
    StreamUsage su(ctx.format);
    bool clientGone = false;
    bool sentAny = false;
    bool strip = ctx.format == ApiFormat::OpenAI && !ctx.request.clientAskedUsage;
    std::string whole;           // non-SSE answers: kept for usage
    std::int64_t wholeBytes = 0; // non-SSE answers: bytes served
    SseParser parser([&](const SseEvent& ev) {
        bool hadUsage = su.onEvent(ev.name, ev.data);
        if (strip && hadUsage && isUsageOnlyChunk(ev.data))
            return;
        if (!clientGone) {
            clientGone = !w.write(ev.raw);
            sentAny = true;
        }
    });
    // A stream may outlive hold_ttl_seconds: its hold is renewed while it runs,
    // so the sweep never frees money this answer is still spending.
    const std::int64_t ttlMs = ctx.routing->config->settings.holdTtlSeconds * 1000;
    std::int64_t renewAtMs = steadyMs() + ttlMs / 3;
    bool broke = false;
    std::string buf;
    for (;;) {
        buf.clear();
        auto more = t.read(buf);
        if (!more) {
            broke = true;
            break;
        }
        if (!*more)
            break;
        if (isSse) {
            if (auto fed = parser.feed(buf); !fed) {
                broke = true;
                break;
            }
        } else {
            if (whole.size() < kMaxUpstreamBody)
                whole += buf;
            wholeBytes += static_cast<std::int64_t>(buf.size());
            clientGone = !w.write(buf);
            sentAny = true;
        }
        if (clientGone || shuttingDownPastGrace()) {
            t.cancel();
            break;
        }
        if (ctx.held && steadyMs() >= renewAtMs) {
            renewAtMs = steadyMs() + ttlMs / 3;
            if (!ledger_->renewHold(ctx.requestId, wallMs() + ttlMs))
                metrics_.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", "renew"}}));
        }
    }
    if (isSse && !clientGone && !broke) {
        std::string_view tail = parser.finish();
        if (!tail.empty())
            w.write(tail);
    }
    metrics().observeLatency(ctx.route, std::chrono::duration<double>(std::chrono::steady_clock::now() - ctx.start).count());

    bool complete = !broke && !clientGone && !shuttingDownPastGrace();
    Usage usage;
    std::string note;
    if (!isSse) {
        // A "stream" that is not SSE: billed like a whole answer, from its bytes
        // when its usage is missing or unbelievable.
        auto u = usageFromBody(ctx.format, whole);
        if (u && complete) {
            usage = *u;
        } else {
            usage = estimatedUsage(ctx, wholeBytes);
            note = "answer to a stream request was not SSE; " +
                   (u ? std::string("it was cut; usage estimated") : usageNote(u.error()));
        }
    } else if (complete && su.reported() && !su.invalid() && su.charsAfterUsage() == 0) {
        usage = su.usage();
    } else {
        // An upstream that broke before any content served nothing: no charge.
        // A client that left was being served: it pays for what was reported.
        if (!sentAny || (!complete && !clientGone && su.textChars() == 0)) {
            releaseHold(ctx);
            finishLog(ctx, 502, nullptr, nullptr, "stream broke before any content");
            return;
        }
        usage = partialUsage(ctx, su);
        if (su.invalid())
            note = "upstream " + su.invalidReason() + "; usage estimated";
        else if (!complete)
            note =
                clientGone ? "client disconnected; usage estimated" : "stream cut; usage estimated";
        else if (su.reported())
            note = "content after the usage event; output estimated";
        else
            note = "stream ended without usage; usage estimated";
    }
    if (ctx.format == ApiFormat::Responses)
        ctx.responseId = isSse ? su.responseId() : responseIdFromBody(whole);
    Billed billed = bill(ctx, usage, t.status());
    if (!billed.recorded)
        note = "charge could not be recorded";
    else if (billed.capped)
        note += note.empty() ? "charge capped by the client's limit"
                             : "; charge capped by the client's limit";
    finishLog(ctx, t.status(), &billed.usage, &billed, note);
}

} // namespace trollproxy::internal
