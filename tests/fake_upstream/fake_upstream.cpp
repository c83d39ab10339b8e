// trollproxy-fake-upstream: a local LLM provider for tests, demos and benchmarks.
// Speaks OpenAI (chat and Responses), LiteLLM and Anthropic formats, streaming or not;
// request headers (x-fake-*) choose latency, chunking, usage and failures; /_requests and
// /_stats let tests see what it received and what it served.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <httplib.h>
#include <simdjson.h>

#include "hostile.hpp"
#include "responses_wire.hpp"
#include "wire.hpp"

using namespace fake;

namespace {

struct Options {
    int chunks = 8;
    int chunkDelayMs = 0;
    int latencyMs = 0;
    int threads = 512;
    std::set<std::string> keys;
    std::map<std::string, std::string> failKeys;
};

struct Stats {
    std::mutex mutex;
    std::deque<std::string> requests; // JSON objects
    std::int64_t count = 0, completed = 0;
    Tokens served;
    std::map<std::string, int> failures; // x-fake-id -> failures so far
    std::set<int> clientPorts;           // one per connection the requests came on
};

Options options;
Stats stats;
ResponsesStore responses;
httplib::Server* server = nullptr;

std::string header(const httplib::Request& r, const char* name, const std::string& def = "") {
    return r.has_header(name) ? r.get_header_value(name) : def;
}

int intHeader(const httplib::Request& r, const char* name, int def) {
    return r.has_header(name) ? std::atoi(r.get_header_value(name).c_str()) : def;
}

void record(const httplib::Request& r) {
    std::string headers = "{";
    for (const auto& [k, v] : r.headers) {
        if (k == "REMOTE_ADDR" || k == "REMOTE_PORT" || k == "LOCAL_ADDR" || k == "LOCAL_PORT")
            continue;
        headers += (headers.size() > 1 ? "," : "") + quote(k) + ":" + quote(v);
    }
    headers += "}";
    std::string json = "{\"method\":" + quote(r.method) + ",\"path\":" + quote(r.path) +
                       ",\"target\":" + quote(r.target) + ",\"headers\":" + headers +
                       ",\"body\":" + quote(r.body) + "}";
    std::lock_guard lock(stats.mutex);
    ++stats.count;
    stats.clientPorts.insert(r.remote_port);
    stats.requests.push_back(std::move(json));
    if (stats.requests.size() > 100)
        stats.requests.pop_front();
}

void served(const Tokens& t) {
    std::lock_guard lock(stats.mutex);
    ++stats.completed;
    stats.served.input += t.input;
    stats.served.output += t.output;
    stats.served.cacheWrite += t.cacheWrite;
    stats.served.cacheRead += t.cacheRead;
}

void sendError(httplib::Response& res, bool anthropic, const std::string& what, int retryAfter) {
    int status = what == "400budget" ? 400 : std::atoi(what.c_str());
    if (status < 400 || status > 599)
        status = 500;
    std::string msg = what == "400budget"
                          ? "Budget has been exceeded! Current cost: 10.5, Max budget: 10.0"
                      : status == 429 ? "Rate limit reached for requests"
                      : status == 401 ? "Incorrect API key provided"
                      : status == 400 ? "Invalid request: messages is malformed"
                                      : "The upstream had an error (" + what + ")";
    res.status = status;
    if (status == 429)
        res.set_header("Retry-After", std::to_string(retryAfter));
    if (what == "400budget") {
        // LiteLLM's key budget error (ProxyErrorTypes.budget_exceeded), on every route.
        res.set_content("{\"error\":{\"message\":" + quote(msg) +
                            ",\"type\":\"budget_exceeded\",\"param\":null,\"code\":\"400\"}}",
                        "application/json");
        return;
    }
    res.set_content(anthropic ? anthropicError(status, msg) : openaiError(status, msg),
                    "application/json");
}

// Reads the request fields the answer depends on.
void readRequest(const std::string& body, Answer& a, bool& stream) {
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (parser.parse(body).get(doc))
        return;
    std::string_view s;
    if (!doc["model"].get_string().get(s))
        a.model = s;
    bool b = false;
    if (!doc["stream"].get_bool().get(b))
        stream = b;
    if (!doc["stream_options"]["include_usage"].get_bool().get(b))
        a.includeUsage = b;
    simdjson::dom::array tools;
    if (!doc["tools"].get_array().get(tools) && tools.size() > 0) {
        simdjson::dom::element t = tools.at(0);
        if (!t["function"]["name"].get_string().get(s) || !t["name"].get_string().get(s))
            a.toolName = s;
    }
}

// Records the request, checks its key and the failures it asks for; false: `res` holds the error.
bool admit(const httplib::Request& req, httplib::Response& res, bool anthropic) {
    record(req);
    std::string auth = header(req, "Authorization");
    std::string key = auth.rfind("Bearer ", 0) == 0 ? auth.substr(7) : "";
    if (key.empty() || (!options.keys.empty() && !options.keys.count(key))) {
        sendError(res, anthropic, "401", 1);
        return false;
    }
    int retryAfter = intHeader(req, "x-fake-retry-after", 1);
    if (auto it = options.failKeys.find(key); it != options.failKeys.end()) {
        sendError(res, anthropic, it->second, retryAfter);
        return false;
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(intHeader(req, "x-fake-latency-ms", options.latencyMs)));
    std::string status = header(req, "x-fake-status");
    if (!status.empty()) {
        int times = intHeader(req, "x-fake-fail-times", -1);
        bool fail = true;
        if (times >= 0) {
            std::lock_guard lock(stats.mutex);
            int& n = stats.failures[header(req, "x-fake-id")];
            fail = n < times;
            n += fail;
        }
        if (fail) {
            sendError(res, anthropic, status, retryAfter);
            return false;
        }
    }
    return true;
}

// x-fake-usage: "input,output,cacheWrite,cacheRead", else `def`.
Tokens fakeUsage(const httplib::Request& req, Tokens def) {
    if (!req.has_header("x-fake-usage"))
        return def;
    long long v[4] = {0, 0, 0, 0};
    std::sscanf(req.get_header_value("x-fake-usage").c_str(), "%lld,%lld,%lld,%lld", &v[0], &v[1],
                &v[2], &v[3]);
    return Tokens{v[0], v[1], v[2], v[3]};
}

void handle(const httplib::Request& req, httplib::Response& res, bool anthropic) {
    if (!admit(req, res, anthropic))
        return;
    Answer a;
    bool stream = false;
    a.model = "unknown";
    readRequest(req.body, a, stream);
    if (header(req, "x-fake-tool-call") == "0")
        a.toolName.clear(); // a text answer even with tools (an agent then finishes in one turn)
    a.chunks = std::max(1, intHeader(req, "x-fake-chunks", options.chunks));
    a.style =
        header(req, "x-fake-usage-style") == "litellm" ? UsageStyle::LiteLLM : UsageStyle::OpenAI;
    a.reportUsage = header(req, "x-fake-no-usage") != "1";
    a.tokens =
        fakeUsage(req, Tokens{static_cast<std::int64_t>(req.body.size() / 4), a.chunks * 3, 0, 0});
    if (hostile::answer(req, res, a, anthropic, stream))
        return; // lying usage, non-SSE streams, gzip, chosen errors (hostile.hpp)
    if (!stream) {
        res.set_content(anthropic ? anthropicMessage(a) : openaiCompletion(a), "application/json");
        served(a.tokens);
        return;
    }
    int delay = intHeader(req, "x-fake-chunk-delay-ms", options.chunkDelayMs);
    int cutAfter = intHeader(req, "x-fake-cut-after", -1);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream", [a, anthropic, delay, cutAfter](std::size_t, httplib::DataSink& sink) {
            auto send = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
            bool ok =
                send(anthropic ? anthropicStart(a) + anthropicBlockStart(a) : openaiFirstChunk(a));
            for (int i = 0; ok && i < a.chunks; ++i) {
                if (i == cutAfter)
                    return false; // drop the connection mid-stream
                if (delay > 0)
                    std::this_thread::sleep_for(std::chrono::milliseconds(delay));
                ok = send(anthropic ? anthropicDelta(a, i) : openaiContentChunk(a, i));
            }
            if (cutAfter >= a.chunks)
                return false;
            ok = ok &&
                 send(anthropic ? anthropicFinish(a) : openaiFinishChunk(a) + openaiUsageChunk(a));
            if (ok) {
                served(a.reportUsage ? a.tokens : Tokens{});
                sink.done();
            }
            return ok;
        });
}

// POST /v1/responses: text (or a function call when x-fake-tool-call is 1), after a reasoning
// item when the request has "reasoning"; x-fake-reasoning-tokens counts within output_tokens.
void handleResponses(const httplib::Request& req, httplib::Response& res) {
    if (!admit(req, res, false))
        return;
    ResponsesAnswer a;
    bool stream = false;
    std::string function;
    readResponsesRequest(req.body, a, stream, function);
    a.id = responses.newId();
    a.createdAt = static_cast<std::int64_t>(std::time(nullptr));
    if (header(req, "x-fake-tool-call") == "1" && !a.afterToolOutput)
        a.toolName = function;
    a.incomplete = header(req, "x-fake-incomplete") == "1";
    a.chunks = std::max(1, intHeader(req, "x-fake-chunks", options.chunks));
    a.reportUsage = header(req, "x-fake-no-usage") != "1";
    a.reasoningTokens =
        std::max(0, intHeader(req, "x-fake-reasoning-tokens", a.reasoning ? a.chunks * 2 : 0));
    a.tokens = fakeUsage(req, Tokens{static_cast<std::int64_t>(req.body.size() / 4),
                                     a.chunks * 3 + a.reasoningTokens, 0, 0});
    a.tokens.cacheWrite = 0; // the Responses API reports no cache writes
    a.reasoningTokens = std::min(a.reasoningTokens, a.tokens.output);
    Tokens reported = a.reportUsage ? a.tokens : Tokens{};
    if (!stream) {
        std::string whole = responsesObject(a, true);
        if (a.store)
            responses.put(a.id, whole);
        res.set_content(whole, "application/json");
        served(reported);
        return;
    }
    int delay = intHeader(req, "x-fake-chunk-delay-ms", options.chunkDelayMs);
    int cutAfter = intHeader(req, "x-fake-cut-after", -1);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream", [a, delay, cutAfter, reported](std::size_t, httplib::DataSink& sink) {
            ResponsesEvents events = responsesEvents(a);
            auto send = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
            bool ok = send(events.head);
            for (int i = 0; ok && i < a.chunks; ++i) {
                if (i == cutAfter)
                    return false; // drop the connection mid-stream
                if (delay > 0)
                    std::this_thread::sleep_for(std::chrono::milliseconds(delay));
                ok = send(events.deltas[static_cast<std::size_t>(i)]);
            }
            if (cutAfter >= a.chunks)
                return false;
            ok = ok && send(events.tail);
            if (ok) {
                if (a.store)
                    responses.put(a.id, responsesObject(a, true));
                served(reported);
                sink.done();
            }
            return ok;
        });
}

// GET and DELETE /v1/responses/{id}: only the ids this upstream stored.
void storedResponse(const httplib::Request& req, httplib::Response& res, bool remove) {
    if (!admit(req, res, false))
        return;
    std::string id = req.matches[1], json;
    bool found = remove ? responses.remove(id) : responses.get(id, json);
    if (!found) {
        res.status = 404;
        res.set_content(openaiError(404, "Response with id '" + id + "' not found."),
                        "application/json");
        return;
    }
    res.set_content(remove ? responsesDeleted(id) : json, "application/json");
}

void onSignal(int) {
    if (server)
        server->stop();
}

} // namespace

int main(int argc, char** argv) {
    std::string listen = "127.0.0.1:0";
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--listen")
            listen = v;
        else if (k == "--chunks")
            options.chunks = std::atoi(v.c_str());
        else if (k == "--chunk-delay-ms")
            options.chunkDelayMs = std::atoi(v.c_str());
        else if (k == "--latency-ms")
            options.latencyMs = std::atoi(v.c_str());
        else if (k == "--threads")
            options.threads = std::atoi(v.c_str());
        else if (k == "--keys") {
            for (std::size_t p = 0; p <= v.size();) {
                std::size_t e = v.find(',', p);
                options.keys.insert(
                    v.substr(p, e == std::string::npos ? std::string::npos : e - p));
                p = e == std::string::npos ? v.size() + 1 : e + 1;
            }
        } else if (k == "--fail-key") {
            auto eq = v.find('=');
            options.failKeys[v.substr(0, eq)] = eq == std::string::npos ? "500" : v.substr(eq + 1);
        } else {
            std::fprintf(stderr, "unknown option %s\n", k.c_str());
            return 2;
        }
    }
    httplib::Server svr;
    server = &svr;
    int threads = options.threads;
    svr.new_task_queue = [threads] {
        return new httplib::ThreadPool(static_cast<std::size_t>(threads));
    };
    svr.set_keep_alive_max_count(100000);
    // Like a real provider: no Nagle delay between the head and the first event, and a
    // listen queue that takes bursts of connections (httplib 0.11 listens with a backlog of 5).
    svr.set_tcp_nodelay(true);
    int listenFd = -1;
    svr.set_socket_options([&listenFd](socket_t s) {
        httplib::default_socket_options(s);
        listenFd = s;
    });
    svr.set_payload_max_length(256 * 1024 * 1024);
    svr.Post("/v1/chat/completions",
             [](const httplib::Request& q, httplib::Response& r) { handle(q, r, false); });
    svr.Post("/v1/messages",
             [](const httplib::Request& q, httplib::Response& r) { handle(q, r, true); });
    svr.Post("/v1/messages/count_tokens", [](const httplib::Request& q, httplib::Response& r) {
        if (admit(q, r, true))
            r.set_content(countTokensAnswer(q.body), "application/json");
    });
    for (const char* path : {"/v1/responses", "/responses"})
        svr.Post(path, handleResponses);
    svr.Get(R"(/(?:v1/)?responses/([^/]+))",
            [](const httplib::Request& q, httplib::Response& r) { storedResponse(q, r, false); });
    svr.Delete(R"(/(?:v1/)?responses/([^/]+))",
               [](const httplib::Request& q, httplib::Response& r) { storedResponse(q, r, true); });
    svr.Get("/v1/models", [](const httplib::Request&, httplib::Response& r) {
        r.set_content(
            R"({"object":"list","data":[{"id":"fake-model","object":"model","created":0,"owned_by":"fake"}]})",
            "application/json");
    });
    svr.Get("/_requests", [](const httplib::Request&, httplib::Response& r) {
        std::lock_guard lock(stats.mutex);
        std::string out = "[";
        for (const auto& j : stats.requests)
            out += (out.size() > 1 ? "," : "") + j;
        r.set_content(out + "]", "application/json");
    });
    svr.Get("/_stats", [](const httplib::Request&, httplib::Response& r) {
        std::lock_guard lock(stats.mutex);
        const Tokens& t = stats.served;
        r.set_content("{\"requests\":" + std::to_string(stats.count) +
                          ",\"connections\":" + std::to_string(stats.clientPorts.size()) +
                          ",\"completed\":" + std::to_string(stats.completed) + ",\"input\":" +
                          std::to_string(t.input) + ",\"output\":" + std::to_string(t.output) +
                          ",\"cache_write\":" + std::to_string(t.cacheWrite) +
                          ",\"cache_read\":" + std::to_string(t.cacheRead) + "}",
                      "application/json");
    });
    svr.Post("/_reset", [](const httplib::Request&, httplib::Response& r) {
        std::lock_guard lock(stats.mutex);
        stats.requests.clear();
        stats.count = stats.completed = 0;
        stats.served = {};
        stats.failures.clear();
        stats.clientPorts.clear();
        r.set_content("{}", "application/json");
    });
    auto colon = listen.rfind(':');
    std::string host = listen.substr(0, colon);
    int port = std::atoi(listen.c_str() + colon + 1);
    if (port == 0)
        port = svr.bind_to_any_port(host);
    else if (!svr.bind_to_port(host, port))
        port = -1;
    if (port < 0) {
        std::fprintf(stderr, "cannot listen on %s\n", listen.c_str());
        return 1;
    }
    if (listenFd >= 0)
        ::listen(listenFd, SOMAXCONN);
    std::signal(SIGTERM, onSignal);
    std::signal(SIGINT, onSignal);
    std::signal(SIGPIPE, SIG_IGN);
    std::printf("listening on %s:%d\n", host.c_str(), port);
    std::fflush(stdout);
    svr.listen_after_bind();
    return 0;
}
