// Forwarding: tries endpoints and keys in order, then answers whole or as a stream, and bills.
#include <algorithm>
#include <cctype>
#include <set>

#include "trollproxy/pricing.hpp"
#include "trollproxy/sse.hpp"
#include "proxy/api_errors.hpp"
#include "proxy/proxy_service.hpp"

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

HeaderList upstreamHeaders(const RequestContext& ctx, const std::string& key) {
    static const std::set<std::string> kDrop{
        "authorization", "x-api-key", "host", "content-length", "connection", "keep-alive",
        "proxy-authorization", "proxy-authenticate", "proxy-connection", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "accept-encoding", "cookie", "expect", "forwarded",
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-real-ip",
        "http2-settings"};
    const Config& cfg = *ctx.routing->config;
    std::set<std::string> named; // hop-by-hop headers named in Connection
    for (const auto& [k, v] : ctx.http->headers) {
        if (lower(k) != "connection")
            continue;
        std::size_t p = 0;
        while (p < v.size()) {
            std::size_t e = v.find(',', p);
            std::string tok = lower(v.substr(p, e == std::string::npos ? std::string::npos : e - p));
            tok.erase(0, tok.find_first_not_of(" \t"));
            tok.erase(tok.find_last_not_of(" \t") + 1);
            named.insert(tok);
            p = e == std::string::npos ? v.size() : e + 1;
        }
    }
    HeaderList out;
    bool hasVersion = false;
    bool hasType = false;
    for (const auto& [k, v] : ctx.http->headers) {
        std::string l = lower(k);
        if (kDrop.count(l) || named.count(l) || (l == "user-agent" && !cfg.userAgent.empty()))
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

bool isKeyTrouble(int status, const std::string& body) {
    if (status == 401 || status == 402 || status == 403)
        return true;
    return status == 400 && lower(body).find("budget") != std::string::npos;
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

std::int64_t ceilDiv(std::int64_t a, std::int64_t b) {
    return (a + b - 1) / b;
}

// Usage for a stream that ended early: what was reported, with the output at
// least what the client was sent.
Usage partialUsage(const RequestContext& ctx, const StreamUsage& su) {
    Usage u = su.usage();
    if (!su.reported())
        u.uncachedInput = ceilDiv(ctx.promptBytes, 4);
    u.output = std::max(u.output, ceilDiv(su.textChars(), 4));
    u.estimated = true;
    return u;
}

} // namespace

HttpResponse ProxyServiceImpl::forward(RequestContext& ctx) {
    std::string body = rewriteForUpstream(ctx.format, ctx.http->body, ctx.request, ctx.model->upstreamModelId);

    int attempts = 0;
    int lastStatus = 0;
    ErrorCode lastError = ErrorCode::Unavailable;
    std::int64_t soonest = 0;
    bool anyEndpoint = false;
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
            if (status == 429) {
                std::int64_t wait = retryAfterMs(*t);
                ep.keys->coolDown(k, steadyMs() + wait);
                soonest = soonest ? std::min(soonest, wait) : wait;
                lastStatus = 429;
                continue;
            }
            if (isKeyTrouble(status, errBody)) {
                ep.keys->setAside(k, steadyMs() + kSetAsideMs);
                lastStatus = 503;
                continue;
            }
            if (status >= 500) {
                lastStatus = 502;
                continue;
            }
            // The upstream refused the request itself: the client should see why.
            releaseHold(ctx);
            finishLog(ctx, status, nullptr, Money{}, "upstream refused the request");
            HttpResponse r;
            r.status = status;
            r.body = std::move(errBody);
            std::string ct = t->header("content-type");
            r.contentType = ct.empty() ? "application/json" : ct;
            return r;
        }
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
    finishLog(ctx, r.status, nullptr, Money{}, "upstream failed");
    return r;
}

HttpResponse ProxyServiceImpl::wholeAnswer(RequestContext& ctx, UpstreamTransfer& t) {
    std::string body;
    if (auto r = readAll(t, body); !r) {
        releaseHold(ctx);
        finishLog(ctx, 502, nullptr, Money{}, "upstream answer broke");
        return apiError(ctx.format, 502, "the upstream answer broke off: " + r.error().message, "upstream_error");
    }
    auto reported = usageFromBody(ctx.format, body);
    Usage usage;
    if (reported) {
        usage = *reported;
    } else {
        usage.uncachedInput = ceilDiv(ctx.promptBytes, 4);
        usage.output = ceilDiv(static_cast<std::int64_t>(body.size()), 4);
        usage.estimated = true;
    }
    Money cost;
    if (!bill(ctx, usage, t.status(), cost)) {
        finishLog(ctx, 503, &usage, cost, "charge could not be recorded; answer withheld");
        return apiError(ctx.format, 503, "billing is temporarily unavailable; retry later", "ledger_unavailable");
    }
    finishLog(ctx, t.status(), &usage, cost);
    HttpResponse r;
    r.status = t.status();
    std::string ct = t.header("content-type");
    r.contentType = ct.empty() ? "application/json" : ct;
    r.body = std::move(body);
    r.headers.emplace_back("x-trollproxy-cost", cost.toString());
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
    r.stream = [g, isSse](ResponseWriter& w) { g->done = true; g->self->pumpStream(g->ctx, *g->transfer, w, isSse); };
    return r;
}

void ProxyServiceImpl::pumpStream(RequestContext& ctx, UpstreamTransfer& t, ResponseWriter& w, bool isSse) {
    StreamUsage su(ctx.format);
    bool clientGone = false;
    bool sentAny = false;
    bool strip = ctx.format == ApiFormat::OpenAI && !ctx.request.clientAskedUsage;
    std::string whole; // non-SSE answers: kept for usage
    SseParser parser([&](const SseEvent& ev) {
        bool hadUsage = su.onEvent(ev.name, ev.data);
        if (strip && hadUsage && isUsageOnlyChunk(ev.data))
            return;
        if (!clientGone) {
            clientGone = !w.write(ev.raw);
            sentAny = true;
        }
    });
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
            clientGone = !w.write(buf);
            sentAny = true;
        }
        if (clientGone || shuttingDownPastGrace()) {
            t.cancel();
            break;
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
    const char* note = "";
    if (!isSse) {
        auto u = usageFromBody(ctx.format, whole);
        usage = u ? *u : partialUsage(ctx, su);
    } else if (complete && su.reported()) {
        usage = su.usage();
    } else {
        // An upstream that broke before any content served nothing: no charge.
        // A client that left was being served: it pays for what was reported.
        if (!sentAny || (!complete && !clientGone && su.textChars() == 0)) {
            releaseHold(ctx);
            finishLog(ctx, 502, nullptr, Money{}, "stream broke before any content");
            return;
        }
        usage = partialUsage(ctx, su);
        note = clientGone ? "client disconnected; usage estimated" : "stream cut; usage estimated";
        if (complete)
            note = "stream ended without usage; usage estimated";
    }
    Money cost;
    if (!bill(ctx, usage, t.status(), cost))
        note = "charge could not be recorded";
    finishLog(ctx, t.status(), &usage, cost, note);
}

} // namespace trollproxy::internal
