// Fuzz target: what the proxy bills for a request body is what the upstream serves.
//
// The proxy reads a body once (parseClientRequest) and forwards a rewrite of it.
// The upstream is modelled as a last-key-wins parser, as most JSON parsers are.
// For every body the proxy accepts, the upstream's reading of the forwarded body
// must agree with the proxy's on every field that decides the price: the model
// (the proxy's rewrite), streaming, the output limits and the number of answers.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <simdjson.h>

#include "proxy/request_body.hpp"

using namespace trollproxy;
using namespace trollproxy::internal;

namespace {

void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "fuzz_request: invariant violated: %s\n", what);
        std::abort();
    }
}

// The value of the LAST member named `key`, as a last-key-wins parser reads it.
bool lastMember(simdjson::dom::object obj, std::string_view key, simdjson::dom::element& out) {
    bool found = false;
    for (auto field : obj) {
        if (field.key == key) {
            out = field.value;
            found = true;
        }
    }
    return found;
}

void checkAgreement(ApiFormat format, std::string_view body) {
    auto req = parseClientRequest(format, body);
    if (!req)
        return;
    const std::string upstreamModel = "upstream/model";
    std::string forwarded = rewriteForUpstream(format, body, *req, upstreamModel);

    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    require(!parser.parse(forwarded).get(doc), "the forwarded body is not valid JSON");
    simdjson::dom::object obj;
    require(!doc.get_object().get(obj), "the forwarded body is not an object");

    simdjson::dom::element v;
    std::string_view model;
    require(lastMember(obj, "model", v) && !v.get_string().get(model),
            "the upstream reads no model");
    require(model == upstreamModel, "the upstream serves another model than the one billed");

    bool stream = false;
    if (lastMember(obj, "stream", v) && !v.is_null())
        require(!v.get_bool().get(stream), "the upstream reads a non-boolean stream");
    require(stream == req->stream, "the upstream streams when the proxy does not, or the reverse");

    for (const char* key : {"max_tokens", "max_completion_tokens", "max_output_tokens"}) {
        if (!lastMember(obj, key, v) || v.is_null())
            continue;
        std::int64_t n = 0;
        require(!v.get_int64().get(n), "the upstream reads a non-integer output limit");
        require(n <= req->maxOutputTokens, "the upstream may produce more than the hold covers");
    }
    if (format != ApiFormat::Anthropic) {
        std::int64_t n = 1;
        if (lastMember(obj, "n", v) && !v.is_null())
            require(!v.get_int64().get(n), "the upstream reads a non-integer n");
        require(n == req->choices, "the upstream generates more answers than the hold covers");
        if (req->stream) {
            simdjson::dom::element so, iu;
            bool usage = false;
            require(lastMember(obj, "stream_options", so),
                    "a stream is forwarded without stream_options");
            simdjson::dom::object soObj;
            require(!so.get_object().get(soObj), "stream_options is not an object upstream");
            require(lastMember(soObj, "include_usage", iu) && !iu.get_bool().get(usage) && usage,
                    "a stream is forwarded without include_usage");
        }
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view body(reinterpret_cast<const char*>(data), size);
    checkAgreement(ApiFormat::OpenAI, body);
    checkAgreement(ApiFormat::Anthropic, body);
    return 0;
}
