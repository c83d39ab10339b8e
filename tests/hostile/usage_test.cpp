// Hostile answers: usage that lies (negative, huge, strings, nulls, {}, cache > prompt,
// mid-stream), "streams" that are not SSE, refusal text, gzip nobody asked for.
#include <doctest/doctest.h>

#include "hostile_stack.hpp"

using namespace hostile;

namespace {

const char* path(bool anthropic) {
    return anthropic ? "/v1/messages" : "/v1/chat/completions";
}

std::string body(bool anthropic, bool stream, int maxTokens = 256) {
    return anthropic ? messagesBody(stream, "", maxTokens) : chatBody(stream);
}

struct Lie {
    const char* what;
    const char* openai;    // usage JSON for OpenAI answers
    const char* anthropic; // usage JSON for Anthropic answers
};

// Each is invalid: a count that is not an integer in 0..1e9, or cached > prompt.
const Lie kLies[] = {
    {"negative", R"({"prompt_tokens":-100,"completion_tokens":-10,"total_tokens":-110})",
     R"({"input_tokens":-100,"output_tokens":-10})"},
    {"above 9e15",
     R"({"prompt_tokens":100,"completion_tokens":9100000000000000,"total_tokens":9100000000000100})",
     R"({"input_tokens":100,"output_tokens":9100000000000000})"},
    {"1e300", R"({"prompt_tokens":1e300,"completion_tokens":1e300})",
     R"({"input_tokens":1e300,"output_tokens":1e300})"},
    {"above uint64", R"({"prompt_tokens":100000000000000000000,"completion_tokens":10})",
     R"({"input_tokens":100000000000000000000,"output_tokens":10})"},
    {"above 1e9", R"({"prompt_tokens":100,"completion_tokens":1000000001})",
     R"({"input_tokens":100,"output_tokens":1000000001})"},
    {"strings", R"({"prompt_tokens":"100","completion_tokens":"10"})",
     R"({"input_tokens":"100","output_tokens":"10"})"},
    {"nulls", R"({"prompt_tokens":null,"completion_tokens":null,"total_tokens":null})",
     R"({"input_tokens":null,"output_tokens":null})"},
    {"empty object", "{}", "{}"},
    {"fraction", R"({"prompt_tokens":100,"completion_tokens":10.5})",
     R"({"input_tokens":100,"output_tokens":10.5})"},
    {"boolean", R"({"prompt_tokens":true,"completion_tokens":10})",
     R"({"input_tokens":true,"output_tokens":10})"},
    {"array", R"({"prompt_tokens":[100],"completion_tokens":10})",
     R"({"input_tokens":[100],"output_tokens":10})"},
    {"cache counts",
     R"({"prompt_tokens":100,"completion_tokens":10,"prompt_tokens_details":{"cached_tokens":1000000}})",
     R"({"input_tokens":100,"output_tokens":10,"cache_read_input_tokens":-1000000})"},
    {"cache counts (LiteLLM)",
     R"({"prompt_tokens":100,"completion_tokens":10,"cache_read_input_tokens":1000000})",
     R"({"input_tokens":100,"output_tokens":10,"cache_creation_input_tokens":"5"})"},
    {"cache writes",
     R"({"prompt_tokens":100,"completion_tokens":10,"cache_creation_input_tokens":1000000})",
     R"({"input_tokens":100,"output_tokens":10,"cache_creation_input_tokens":1.5})"},
};

// The request was billed from the estimate: input from the request's bytes,
// output from `outputUnits` (answer bytes, or streamed text characters).
void expectEstimate(Stack& s, harness::RawResponse& r, std::size_t requestBytes,
                    std::int64_t outputUnits, bool invalidNote) {
    CAPTURE(r.body.substr(0, 1500));
    CHECK(r.status == 200);
    LogLine l = s.logFor(r.headers["x-request-id"]);
    CHECK(!l.requestId.empty());
    if (l.requestId.empty())
        return;
    CAPTURE(l.raw);
    CHECK(l.estimated);
    std::int64_t in = ceilDiv(static_cast<std::int64_t>(requestBytes), 4),
                 out = ceilDiv(outputUnits, 4);
    CHECK(l.input == in);
    CHECK(l.output == out);
    CHECK(l.cacheWrite == 0);
    CHECK(l.cacheRead == 0);
    CHECK(l.cost.toString() == priceM(in, out).toString());
    if (invalidNote)
        CHECK(containsNoCase(l.note, "invalid usage"));
    if (r.headers.count("x-trollproxy-cost"))
        CHECK(r.headers["x-trollproxy-cost"] == l.cost.toString());
}

// The request was billed exactly `cost` from believed usage.
void expectBilled(Stack& s, harness::RawResponse& r, Money cost) {
    CAPTURE(r.body.substr(0, 1500));
    CHECK(r.status == 200);
    LogLine l = s.logFor(r.headers["x-request-id"]);
    CHECK(!l.requestId.empty());
    if (l.requestId.empty())
        return;
    CAPTURE(l.raw);
    CHECK(!l.estimated);
    CHECK(l.cost.toString() == cost.toString());
    if (r.headers.count("x-trollproxy-cost"))
        CHECK(r.headers["x-trollproxy-cost"] == cost.toString());
}

} // namespace

TEST_CASE("unbelievable usage in a whole answer is billed as estimated, never free") {
    Stack s;
    std::string key = s.user("u", "100");
    Books books(s, "u");
    for (const Lie& lie : kLies) {
        for (bool anthropic : {false, true}) {
            CAPTURE(std::string(lie.what));
            CAPTURE(anthropic);
            std::string b = body(anthropic, false);
            auto r = call(s, path(anthropic), b, key,
                          {{"x-fake-usage-json", anthropic ? lie.anthropic : lie.openai}});
            if (std::string(lie.what) != "above uint64") // valid JSON, but beyond simdjson (isJson)
                CHECK(isJson(r.body));
            expectEstimate(s, r, b.size(), static_cast<std::int64_t>(r.body.size()), true);
        }
    }
    books.check();
}

TEST_CASE("unbelievable usage in a stream is billed as estimated, never free") {
    Stack s;
    std::string key = s.user("u", "100");
    Books books(s, "u");
    for (const Lie& lie : kLies) {
        for (bool anthropic : {false, true}) {
            CAPTURE(std::string(lie.what));
            CAPTURE(anthropic);
            std::string b = body(anthropic, true);
            auto r = call(s, path(anthropic), b, key,
                          {{"x-fake-usage-json", anthropic ? lie.anthropic : lie.openai},
                           {"x-fake-chunks", "20"}});
            CHECK(r.body.find(anthropic ? "message_stop" : "[DONE]") != std::string::npos);
            expectEstimate(s, r, b.size(), streamTextChars(20), true);
        }
    }
    books.check();
}

TEST_CASE("integral floats and cached == prompt are believed") {
    Stack s;
    std::string key = s.user("u", "100");
    Books books(s, "u");
    for (bool stream : {false, true}) {
        for (bool anthropic : {false, true}) {
            CAPTURE(stream);
            CAPTURE(anthropic);
            auto r = call(
                s, path(anthropic), body(anthropic, stream), key,
                {{"x-fake-usage-json",
                  anthropic
                      ? R"({"input_tokens":100.0,"output_tokens":10.0})"
                      : R"({"prompt_tokens":100.0,"completion_tokens":10.0,"total_tokens":110.0})"}});
            expectBilled(s, r, priceM(100, 10));
        }
        auto cached = call(
            s, path(false), body(false, stream), key,
            {{"x-fake-usage-json",
              R"({"prompt_tokens":100,"completion_tokens":10,"prompt_tokens_details":{"cached_tokens":100}})"}});
        expectBilled(s, cached, priceM(0, 10, 0, 100));
    }
    books.check();
}

TEST_CASE("reported output beyond n x the client's output limit is not believed") {
    Stack s;
    std::string key = s.user("u", "100");
    Books books(s, "u");
    for (bool stream : {false, true}) {
        for (int n : {1, 2}) {
            CAPTURE(stream);
            CAPTURE(n);
            std::string b = chatBody(stream, R"(,"max_tokens":100,"n":)" + std::to_string(n));
            auto r = call(s, path(false), b, key, {{"x-fake-usage", "100,1000000,0,0"}});
            CHECK(r.status == 200);
            LogLine l = s.logFor(r.headers["x-request-id"]);
            CAPTURE(l.raw);
            CHECK(l.cost.toString() == priceM(100, 100 * n).toString());
            CHECK(r.headers["x-trollproxy-cost"] == (stream ? "" : l.cost.toString()));
            // The ledger records the output that was billed.
            auto entries = s.ledger->usage("u", 100);
            REQUIRE(entries);
            std::int64_t billedOutput = -1;
            for (const auto& e : *entries)
                if (e.requestId == l.requestId)
                    billedOutput = e.usage.output;
            CHECK(billedOutput == 100 * n);
        }
    }
    books.check();
}

TEST_CASE("with an output limit the charge never exceeds the hold") {
    Stack s;
    struct Case {
        const char* what;
        bool anthropic, stream;
        std::string body;
        std::map<std::string, std::string> headers;
        bool outputCut = false; ///< only the output is beyond the limit
    };
    std::vector<Case> cases{
        {"OpenAI: 1,000,000 output tokens for max_tokens 100",
         false,
         false,
         chatBody(false, R"(,"max_tokens":100)"),
         {{"x-fake-usage", "100,1000000,0,0"}},
         true},
        {"OpenAI stream: the same",
         false,
         true,
         chatBody(true, R"(,"max_tokens":100)"),
         {{"x-fake-usage", "100,1000000,0,0"}},
         true},
        {"OpenAI: 10^9 input tokens for a 100-byte body",
         false,
         false,
         chatBody(false, R"(,"max_tokens":100)"),
         {{"x-fake-usage", "1000000000,10,0,0"}}},
        {"Anthropic: 10^9 cache reads",
         true,
         false,
         messagesBody(false, "", 256),
         {{"x-fake-usage", "100,10,0,1000000000"}}},
        {"Anthropic stream: 10^9 cache writes",
         true,
         true,
         messagesBody(true, "", 256),
         {{"x-fake-usage", "100,10,1000000000,0"}}},
    };
    int users = 0;
    for (auto& c : cases) {
        CAPTURE(std::string(c.what));
        std::string name =
            "u" + std::to_string(++users); // one each: a failure does not drain the next
        std::string key = s.user(name, "100");
        Books books(s, name);
        Money hold = probeHold(s, path(c.anthropic), c.body);
        REQUIRE(hold.nanos > 0);
        auto r = call(s, path(c.anthropic), c.body, key, c.headers);
        CHECK(r.status == 200);
        LogLine l = s.logFor(r.headers["x-request-id"]);
        CAPTURE(l.raw);
        // Never above the hold; absurd input is charged the hold, absurd output is
        // cut to the client's limit (then the rest of the usage is priced as is).
        CHECK(l.cost.nanos > 0);
        CHECK(l.cost.nanos <= hold.nanos);
        if (c.outputCut)
            CHECK(l.output == 100);
        else
            CHECK(l.cost.toString() == hold.toString());
        CHECK(l.note.find("capped") != std::string::npos);
        CHECK(l.shortfall.nanos == 0);
        if (!c.stream)
            CHECK(r.headers["x-trollproxy-cost"] == l.cost.toString());
        books.check();
    }
}

TEST_CASE("without an output limit the full cost is charged and the shortfall shown") {
    Stack s;
    std::string key = s.user("u", "1");
    Books books(s, "u");
    // 10^9 output tokens are believable; at 2 USD/Mtok they cost 2,000 USD.
    auto r =
        call(s, path(false), body(false, false), key,
             {{"x-fake-usage-json", R"({"prompt_tokens":100,"completion_tokens":1000000000})"}});
    CHECK(r.status == 200);
    Money cost = priceM(100, 1'000'000'000);
    CHECK(r.headers["x-trollproxy-cost"] == "1.000000000");
    CHECK(r.headers["x-trollproxy-shortfall"] == (cost - *Money::parse("1")).toString());
    LogLine l = s.logFor(r.headers["x-request-id"]);
    CAPTURE(l.raw);
    CHECK(!l.estimated);
    CHECK((l.cost + l.shortfall).toString() == cost.toString());
    auto entries = s.ledger->usage("u", 10);
    REQUIRE(entries);
    REQUIRE(entries->size() == 1);
    CHECK((*entries)[0].shortfall.toString() == l.shortfall.toString());
    CHECK(s.total("u").nanos == 0);
    books.check();
}

TEST_CASE("usage followed by more content is not final") {
    Stack s;
    std::string key = s.user("u", "100");
    Books books(s, "u");
    const int chunks = 2000; // about 18 KB of text after a usage of 1 output token
    std::int64_t text = streamTextChars(chunks);
    for (bool anthropic : {false, true}) {
        CAPTURE(anthropic);
        auto r = call(s, path(anthropic), body(anthropic, true, 8192), key,
                      {{"x-fake-usage", "1,1,0,0"},
                       {"x-fake-usage-midstream", "1"},
                       {"x-fake-chunks", std::to_string(chunks)}});
        CHECK(r.status == 200);
        LogLine l = s.logFor(r.headers["x-request-id"]);
        CHECK(!l.requestId.empty());
        CAPTURE(l.raw);
        CHECK(l.estimated);
        // The usage came before any content, so it counted none of it: the text
        // served is the output (at 4 characters a token), not the reported 1.
        CHECK(l.output == std::max<std::int64_t>(1, ceilDiv(text, 4)));
        CHECK(l.cost.toString() == priceM(l.input, l.output, l.cacheWrite, l.cacheRead).toString());
        CHECK(l.cost >= priceM(1, ceilDiv(text, 4)));
    }
    books.check();
}

TEST_CASE("a stream request answered without SSE is billed from its body") {
    Stack s;
    std::string key = s.user("u", "100");
    Books books(s, "u");
    for (bool anthropic : {false, true}) {
        CAPTURE(anthropic);
        std::string b = body(anthropic, true);
        auto valid = call(s, path(anthropic), b, key,
                          {{"x-fake-non-sse", "1"}, {"x-fake-usage", "100,10,0,0"}});
        CHECK(isJson(valid.body));
        expectBilled(s, valid, priceM(100, 10));

        auto lying = call(
            s, path(anthropic), b, key,
            {{"x-fake-non-sse", "1"},
             {"x-fake-usage-json", anthropic ? R"({"input_tokens":-1,"output_tokens":-1})"
                                             : R"({"prompt_tokens":-1,"completion_tokens":-1})"}});
        expectEstimate(s, lying, b.size(), static_cast<std::int64_t>(lying.body.size()), true);

        auto none =
            call(s, path(anthropic), b, key, {{"x-fake-non-sse", "1"}, {"x-fake-no-usage", "1"}});
        expectEstimate(s, none, b.size(), static_cast<std::int64_t>(none.body.size()), false);
    }
    books.check();
}

TEST_CASE("refusal and reasoning text count as output") {
    Stack s;
    std::string key = s.user("u", "100");
    Books books(s, "u");
    for (const char* field : {"refusal", "reasoning", "reasoning_content"}) {
        CAPTURE(field);
        std::string b = body(false, true);
        std::map<std::string, std::string> h{{"x-fake-no-usage", "1"}, {"x-fake-chunks", "20"}};
        if (std::string(field) == "refusal")
            h["x-fake-refusal"] = "1";
        else
            h["x-fake-delta-field"] = field;
        auto r = call(s, path(false), b, key, h);
        CHECK(r.body.find(std::string("\"") + field + "\":\"Hello\"") != std::string::npos);
        expectEstimate(s, r, b.size(), streamTextChars(20), false);
    }
    books.check();
}

TEST_CASE("an unasked-for gzip answer is decoded, never relayed mislabelled") {
    Stack s;
    std::string key = s.user("u", "100");
    Books books(s, "u");
    for (bool stream : {false, true}) {
        for (bool anthropic : {false, true}) {
            CAPTURE(stream);
            CAPTURE(anthropic);
            auto r = call(s, path(anthropic), body(anthropic, stream), key,
                          {{"x-fake-gzip", "1"}, {"x-fake-usage", "100,10,0,0"}});
            CHECK(r.status == 200);
            CHECK((r.headers.count("content-encoding") == 0 ||
                   r.headers["content-encoding"] == "identity"));
            if (stream)
                CHECK(r.body.find(anthropic ? "event: message_stop" : "data: [DONE]") !=
                      std::string::npos);
            else
                CHECK(isJson(r.body));
            expectBilled(s, r, priceM(100, 10));
        }
    }
    // The proxy asks for no encoding.
    for (const auto& seen : s.upstreamRequests())
        CHECK(seen.header("accept-encoding") == "identity");
    books.check();
}

TEST_CASE("an undecodable gzip answer is a 502 and costs nothing") {
    Stack s;
    std::string key = s.user("u", "100");
    Books books(s, "u");
    for (bool anthropic : {false, true}) {
        CAPTURE(anthropic);
        auto whole =
            call(s, path(anthropic), body(anthropic, false), key, {{"x-fake-gzip", "corrupt"}});
        CHECK(whole.status == 502);
        CHECK(whole.headers.count("content-encoding") == 0);
        // A stream: a 502, or (headers already sent) nothing of the undecodable body.
        auto stream =
            call(s, path(anthropic), body(anthropic, true), key, {{"x-fake-gzip", "corrupt"}});
        CHECK((stream.status == 502 ||
               (stream.status == 200 && stream.body.find("data:") == std::string::npos)));
        CHECK(stream.headers.count("content-encoding") == 0);
    }
    CHECK(s.upstreamCount() == 4);
    CHECK(books.spent().nanos == 0);
    books.check();
}
