// Hostile answers of the test upstream, chosen by x-fake-* request headers (see hostile.hpp).
#include "hostile.hpp"

#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <zlib.h>

namespace fake::hostile {

namespace {

struct Modes {
    std::optional<std::string> usageJson;
    bool midstream = false;
    bool nonSse = false;
    std::string deltaField; // "" : content
    std::string gzip;       // "", "1" or "corrupt"
};

std::string header(const httplib::Request& r, const char* name) {
    return r.has_header(name) ? r.get_header_value(name) : std::string();
}

Modes readModes(const httplib::Request& req) {
    Modes m;
    if (req.has_header("x-fake-usage-json"))
        m.usageJson = header(req, "x-fake-usage-json");
    m.midstream = header(req, "x-fake-usage-midstream") == "1";
    m.nonSse = header(req, "x-fake-non-sse") == "1";
    m.deltaField = header(req, "x-fake-delta-field");
    if (header(req, "x-fake-refusal") == "1")
        m.deltaField = "refusal";
    m.gzip = header(req, "x-fake-gzip");
    return m;
}

bool wanted(const Modes& m) {
    return m.usageJson || m.midstream || m.nonSse || !m.deltaField.empty() || !m.gzip.empty();
}

void replaceAll(std::string& s, const std::string& from, const std::string& to) {
    if (from.empty())
        return;
    for (std::size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size()))
        s.replace(p, from.size(), to);
}

// The answer's usage objects replaced by the lie asked for.
std::string lie(std::string text, const Answer& a, bool anthropic, const Modes& m) {
    if (!m.usageJson)
        return text;
    if (anthropic) {
        replaceAll(text, anthropicUsage(a, a.tokens.output), *m.usageJson);
        replaceAll(text, anthropicUsage(a, 1), *m.usageJson); // message_start's
    } else {
        replaceAll(text, openaiUsage(a), *m.usageJson);
    }
    return text;
}

std::string anthropicEvent(const char* name, const std::string& json) {
    return std::string("event: ") + name + "\ndata: " + json + "\n\n";
}

// The SSE events of the stream, in order.
std::vector<std::string> streamEvents(const Answer& a, bool anthropic, const Modes& m) {
    std::vector<std::string> out;
    Answer last = a; // the end of the stream: without usage when it came mid-stream
    if (m.midstream)
        last.reportUsage = false;
    if (anthropic) {
        out.push_back(anthropicStart(a) + anthropicBlockStart(a));
        if (m.midstream && a.reportUsage)
            out.push_back(anthropicEvent(
                "message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null,"
                                 "\"stop_sequence\":null},\"usage\":" +
                                     anthropicUsage(a, a.tokens.output) + "}"));
        for (int i = 0; i < a.chunks; ++i)
            out.push_back(anthropicDelta(a, i));
        out.push_back(anthropicFinish(last));
    } else {
        out.push_back(openaiFirstChunk(a));
        if (m.midstream && a.reportUsage) {
            Answer withUsage = a;
            withUsage.includeUsage = true;
            std::string usage = openaiUsageChunk(withUsage);
            out.push_back(usage.substr(0, usage.rfind("data: [DONE]")));
        }
        for (int i = 0; i < a.chunks; ++i) {
            std::string chunk = openaiContentChunk(a, i);
            if (!m.deltaField.empty())
                replaceAll(chunk,
                           "\"delta\":{\"content\":", "\"delta\":{" + quote(m.deltaField) + ":");
            out.push_back(std::move(chunk));
        }
        out.push_back(openaiFinishChunk(a) + openaiUsageChunk(last));
    }
    for (auto& e : out)
        e = lie(std::move(e), a, anthropic, m);
    return out;
}

// A gzip stream; each push ends on a flush point so the reader can decode it at once.
class Gzip {
public:
    Gzip() { deflateInit2(&z_, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY); }
    ~Gzip() { deflateEnd(&z_); }
    Gzip(const Gzip&) = delete;
    Gzip& operator=(const Gzip&) = delete;

    std::string push(const std::string& in, bool last) {
        std::string out;
        z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
        z_.avail_in = static_cast<uInt>(in.size());
        char buf[16384];
        do {
            z_.next_out = reinterpret_cast<Bytef*>(buf);
            z_.avail_out = sizeof buf;
            deflate(&z_, last ? Z_FINISH : Z_SYNC_FLUSH);
            out.append(buf, sizeof buf - z_.avail_out);
        } while (z_.avail_out == 0);
        return out;
    }

private:
    z_stream z_{};
};

bool answerError(const httplib::Request& req, httplib::Response& res, bool anthropic) {
    std::string auth = header(req, "Authorization");
    if (req.has_header("x-fake-error-json")) {
        std::string key =
            req.has_header("x-fake-error-key") ? "Bearer " + header(req, "x-fake-error-key") : auth;
        if (key != auth)
            return false;
        std::string v = header(req, "x-fake-error-json");
        std::size_t colon = v.find(':');
        res.status = std::atoi(v.substr(0, colon).c_str());
        res.set_content(colon == std::string::npos ? "" : v.substr(colon + 1), "application/json");
        return true;
    }
    if (header(req, "x-fake-echo-auth") == "1") {
        std::string msg =
            "Invalid value for 'temperature'; the request was sent with Authorization: " + auth;
        res.status = 400;
        res.set_content(anthropic ? anthropicError(400, msg) : openaiError(400, msg),
                        "application/json");
        return true;
    }
    return false;
}

} // namespace

bool answer(const httplib::Request& req, httplib::Response& res, const Answer& a, bool anthropic,
            bool stream) {
    if (answerError(req, res, anthropic))
        return true;
    Modes m = readModes(req);
    if (!wanted(m))
        return false;
    if (!m.gzip.empty())
        res.set_header("Content-Encoding", "gzip");
    if (!stream || m.nonSse) {
        std::string body =
            lie(anthropic ? anthropicMessage(a) : openaiCompletion(a), a, anthropic, m);
        if (m.gzip == "1")
            body = Gzip().push(body, true);
        // With a parameter, so httplib does not compress it (again) for a client that accepts gzip.
        res.set_content(body,
                        m.gzip.empty() ? "application/json" : "application/json; charset=utf-8");
        return true;
    }
    auto events = std::make_shared<std::vector<std::string>>(streamEvents(a, anthropic, m));
    auto gzip = m.gzip == "1" ? std::make_shared<Gzip>() : nullptr;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream", [events, gzip](std::size_t, httplib::DataSink& sink) {
            for (std::size_t i = 0; i < events->size(); ++i) {
                bool last = i + 1 == events->size();
                std::string bytes = gzip ? gzip->push((*events)[i], last) : (*events)[i];
                if (!sink.write(bytes.data(), bytes.size()))
                    return false;
            }
            sink.done();
            return true;
        });
    return true;
}

} // namespace fake::hostile
