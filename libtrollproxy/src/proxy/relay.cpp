// Relay: whole answers and streams, and the usage to bill when the reported one cannot be believed.
#include "proxy/relay.hpp"

#include <algorithm>

#include "proxy/request_body.hpp"
#include "proxy/upstream_call.hpp"
#include "trollproxy/sse.hpp"

namespace trollproxy::internal {

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
Usage estimatedUsage(std::int64_t promptBytes, std::int64_t outputChars) {
    Usage u;
    u.uncachedInput = ceilDiv(promptBytes, 4);
    u.output = ceilDiv(outputChars, 4);
    u.estimated = true;
    return u;
}

// Usage for a stream that ended early or whose usage was not final: what was
// reported, plus the text served after it; never less than the text served.
Usage partialUsage(std::int64_t promptBytes, const StreamUsage& su) {
    if (!su.reported() || su.invalid())
        return estimatedUsage(promptBytes, su.textChars());
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

// What happened while passing a stream through.
struct Passage {
    StreamUsage usage;
    bool clientGone = false;
    bool sentAny = false;
    bool broke = false;
    bool cut = false;  // the shutdown grace ended
    std::string whole; // non-SSE answers: kept for usage
    std::int64_t wholeBytes = 0;

    explicit Passage(ApiFormat f) : usage(f) {}
    bool complete() const { return !broke && !clientGone && !cut; }
};

void pass(const StreamRelay& how, UpstreamTransfer& t, ResponseWriter& w, Passage& p) {
    SseParser parser([&](const SseEvent& ev) {
        bool hadUsage = p.usage.onEvent(ev.name, ev.data);
        if (how.stripUsage && hadUsage && isUsageOnlyChunk(ev.data))
            return;
        if (!p.clientGone) {
            p.clientGone = !w.write(ev.raw);
            p.sentAny = true;
        }
    });
    std::string buf;
    for (;;) {
        buf.clear();
        auto more = t.read(buf);
        if (!more || !*more) {
            p.broke = !more;
            break;
        }
        if (!how.isSse) {
            if (p.whole.size() < kMaxUpstreamBody)
                p.whole += buf;
            p.wholeBytes += static_cast<std::int64_t>(buf.size());
            p.clientGone = !w.write(buf);
            p.sentAny = true;
        } else if (!parser.feed(buf)) {
            p.broke = true;
            break;
        }
        p.cut = how.deadline.passed();
        if (p.clientGone || p.cut) {
            t.cancel();
            break;
        }
        // A stream may outlive hold_ttl_seconds: its hold is renewed while it
        // runs, so the sweep never frees money this answer is still spending.
        how.hold->renewIfDue(how.holdTtlMs);
    }
    p.cut = p.cut || how.deadline.passed();
    if (how.isSse && !p.clientGone && !p.broke) {
        std::string_view tail = parser.finish();
        if (!tail.empty())
            w.write(tail);
    }
}

// A "stream" that is not SSE: billed like a whole answer, from its bytes when
// its usage is missing or unbelievable.
ServedUsage nonSseUsage(const StreamRelay& how, const Passage& p) {
    ServedUsage out;
    auto u = usageFromBody(how.format, p.whole);
    if (u && p.complete()) {
        out.usage = *u;
    } else {
        out.usage = estimatedUsage(how.promptBytes, p.wholeBytes);
        out.note = "answer to a stream request was not SSE; " +
                   (u ? std::string("it was cut; usage estimated") : usageNote(u.error()));
    }
    if (how.format == ApiFormat::Responses)
        out.responseId = responseIdFromBody(p.whole);
    return out;
}

std::string sseNote(const Passage& p) {
    const StreamUsage& su = p.usage;
    if (su.invalid())
        return "upstream " + su.invalidReason() + "; usage estimated";
    if (!p.complete())
        return p.clientGone ? "client disconnected; usage estimated"
                            : "stream cut; usage estimated";
    if (su.reported())
        return "content after the usage event; output estimated";
    return "stream ended without usage; usage estimated";
}

ServedUsage sseUsage(const StreamRelay& how, const Passage& p) {
    ServedUsage out;
    const StreamUsage& su = p.usage;
    if (p.complete() && su.reported() && !su.invalid() && su.charsAfterUsage() == 0) {
        out.usage = su.usage();
    } else if (!p.sentAny || (!p.complete() && !p.clientGone && su.textChars() == 0)) {
        // An upstream that broke before any content served nothing: no charge.
        // A client that left was being served: it pays for what was reported.
        out.servedNothing = true;
        out.note = "stream broke before any content";
        return out;
    } else {
        out.usage = partialUsage(how.promptBytes, su);
        out.note = sseNote(p);
    }
    if (how.format == ApiFormat::Responses)
        out.responseId = su.responseId();
    return out;
}

} // namespace

bool ShutdownDeadline::passed() const {
    std::int64_t d = steadyMs ? steadyMs->load() : 0;
    return d != 0 && clock->steadyMs() >= d;
}

WholeAnswer readWholeAnswer(UpstreamTransfer& t, ApiFormat format, std::int64_t promptBytes) {
    WholeAnswer a;
    if (auto r = readAll(t, a.body); !r) {
        a.broke = true;
        a.error = r.error().message;
        return a;
    }
    auto reported = usageFromBody(format, a.body);
    if (format == ApiFormat::Responses)
        a.served.responseId = responseIdFromBody(a.body);
    if (reported) {
        a.served.usage = *reported;
    } else {
        // Missing or unbelievable usage: never free once the answer is served.
        a.served.usage = estimatedUsage(promptBytes, static_cast<std::int64_t>(a.body.size()));
        a.served.note = usageNote(reported.error());
    }
    return a;
}

ServedUsage relayStream(const StreamRelay& how, UpstreamTransfer& t, ResponseWriter& w) {
    Passage p(how.format);
    pass(how, t, w, p);
    return how.isSse ? sseUsage(how, p) : nonSseUsage(how, p);
}

} // namespace trollproxy::internal
