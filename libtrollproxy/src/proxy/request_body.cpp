// Reads and rewrites request bodies without re-encoding them, so unknown fields pass untouched.
#include "proxy/request_body.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include <simdjson.h>

#include "core/json_locate.hpp"
#include "core/json_writer.hpp"

namespace trollproxy::internal {

namespace {

// Byte range of one member of an object, and its key with escapes decoded.
struct Member {
    std::string key;
    std::size_t valueBegin;
    std::size_t valueEnd;
};

std::size_t skipWs(std::string_view s, std::size_t p) {
    while (p < s.size() && (s[p] == ' ' || s[p] == '\t' || s[p] == '\n' || s[p] == '\r'))
        ++p;
    return p;
}

// Past the string starting at `p` (its opening quote). A quote ends it when an
// even number of backslashes precedes it; memchr finds the quotes, so the
// long message texts of an agent's request are not walked byte by byte.
std::size_t skipString(std::string_view s, std::size_t p) {
    const std::size_t start = p + 1;
    for (std::size_t from = start; from < s.size();) {
        const void* hit = std::memchr(s.data() + from, '"', s.size() - from);
        if (!hit)
            break;
        const auto quote = static_cast<std::size_t>(static_cast<const char*>(hit) - s.data());
        std::size_t slashes = 0;
        while (quote - slashes > start && s[quote - slashes - 1] == '\\')
            ++slashes;
        if (slashes % 2 == 0)
            return quote + 1;
        from = quote + 1;
    }
    return s.size();
}

std::size_t skipValue(std::string_view s, std::size_t p) {
    if (p >= s.size())
        return p;
    if (s[p] == '"')
        return skipString(s, p);
    if (s[p] == '{' || s[p] == '[') {
        int depth = 0;
        while (p < s.size()) {
            char c = s[p];
            if (c == '"') {
                p = skipString(s, p);
                continue;
            }
            if (c == '{' || c == '[')
                ++depth;
            else if ((c == '}' || c == ']') && --depth == 0)
                return p + 1;
            ++p;
        }
        return p;
    }
    while (p < s.size() && s[p] != ',' && s[p] != '}' && s[p] != ']' && s[p] != ' ' &&
           s[p] != '\n' && s[p] != '\r' && s[p] != '\t')
        ++p;
    return p;
}

unsigned hex4(std::string_view s, std::size_t p) {
    unsigned v = 0;
    for (std::size_t i = p; i < p + 4 && i < s.size(); ++i) {
        char c = s[i];
        v = v * 16 + static_cast<unsigned>(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

void appendUtf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xc0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xe0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
        out += static_cast<char>(0xf0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    }
}

// Decodes the escapes of a JSON string's text (without its quotes), in a
// document already validated, so the key reads as any JSON parser reads it.
std::string unescape(std::string_view raw) {
    if (raw.find('\\') == std::string_view::npos)
        return std::string(raw);
    std::string out;
    for (std::size_t p = 0; p < raw.size(); ++p) {
        if (raw[p] != '\\') {
            out += raw[p];
            continue;
        }
        char e = raw[++p];
        switch (e) {
        case 'b':
            out += '\b';
            break;
        case 'f':
            out += '\f';
            break;
        case 'n':
            out += '\n';
            break;
        case 'r':
            out += '\r';
            break;
        case 't':
            out += '\t';
            break;
        case 'u': {
            unsigned cp = hex4(raw, p + 1);
            p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && p + 6 < raw.size() &&
                raw.substr(p + 1, 2) == "\\u") {
                unsigned lo = hex4(raw, p + 3);
                if (lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    p += 6;
                }
            }
            appendUtf8(out, cp);
            break;
        }
        default:
            out += e;
            break; // '"', '\\', '/'
        }
    }
    return out;
}

// Members of the object starting at `open` (which must be '{'), in a valid document.
std::vector<Member> members(std::string_view s, std::size_t open, std::size_t* close = nullptr) {
    std::vector<Member> out;
    std::size_t p = skipWs(s, open + 1);
    while (p < s.size() && s[p] == '"') {
        std::size_t keyEnd = skipString(s, p);
        std::string key = unescape(s.substr(p + 1, keyEnd - p - 2));
        p = skipWs(s, keyEnd);
        p = skipWs(s, p + 1); // ':'
        std::size_t vb = p;
        std::size_t ve = skipValue(s, p);
        out.push_back({std::move(key), vb, ve});
        p = skipWs(s, ve);
        if (p < s.size() && s[p] == ',')
            p = skipWs(s, p + 1);
    }
    if (close)
        *close = p; // the '}'
    return out;
}

const Member* findKey(const std::vector<Member>& ms, std::string_view key) {
    for (const auto& m : ms) {
        if (m.key == key)
            return &m;
    }
    return nullptr;
}

Error invalid(std::string msg) {
    return Error{ErrorCode::InvalidArgument, std::move(msg)};
}

// A duplicate key, as a parser sees keys (escapes decoded), makes an object
// ambiguous: one parser reads the first copy, another the last. Refused.
Result<void> rejectDuplicates(simdjson::dom::object obj, std::string_view where) {
    std::vector<std::string_view> keys;
    keys.reserve(obj.size());
    for (auto field : obj)
        keys.push_back(field.key);
    std::sort(keys.begin(), keys.end());
    auto dup = std::adjacent_find(keys.begin(), keys.end());
    if (dup != keys.end())
        return invalid(std::string("duplicate key ") + jsonQuote(*dup) + std::string(where));
    return {};
}

// The client-facing reason a body did not parse: not UTF-8, or not JSON (and where).
Error bodyParseError(simdjson::error_code err, std::string_view body) {
    std::string why =
        err == simdjson::UTF8_ERROR ? "the body is not valid UTF-8" : "the body is not valid JSON";
    JsonSyntaxError where;
    if (err != simdjson::UTF8_ERROR && !checkJsonSyntax(body, where))
        why += " (line " + std::to_string(where.line) + ", column " + std::to_string(where.column) +
               ": " + where.reason + ")";
    return Error{ErrorCode::ParseError, why};
}

Result<void> readModel(simdjson::dom::object obj, ClientRequest& req) {
    simdjson::dom::element v;
    if (obj["model"].get(v))
        return invalid("missing required field \"model\"");
    std::string_view model;
    if (v.get_string().get(model) || model.empty())
        return invalid("\"model\" must be a non-empty string");
    req.model = std::string(model);
    return {};
}

// "stream", and "stream_options.include_usage" (null reads as absent).
Result<void> readStreaming(simdjson::dom::object obj, ClientRequest& req) {
    simdjson::dom::element v;
    if (!obj["stream"].get(v) && !v.is_null()) {
        if (v.get_bool().get(req.stream))
            return invalid("\"stream\" must be a boolean");
    }
    if (obj["stream_options"].get(v) || v.is_null())
        return {};
    simdjson::dom::object so;
    if (v.get_object().get(so))
        return invalid("\"stream_options\" must be an object");
    if (auto r = rejectDuplicates(so, " in \"stream_options\""); !r)
        return r.error();
    simdjson::dom::element iu;
    if (!so["include_usage"].get(iu) && !iu.is_null()) {
        if (iu.get_bool().get(req.clientAskedUsage))
            return invalid("\"stream_options.include_usage\" must be a boolean");
    }
    return {};
}

// The largest of the output-token limits present.
Result<void> readMaxOutputTokens(simdjson::dom::object obj, ClientRequest& req) {
    simdjson::dom::element v;
    for (const char* key : {"max_tokens", "max_completion_tokens", "max_output_tokens"}) {
        if (obj[key].get(v) || v.is_null())
            continue;
        std::int64_t n = 0;
        if (v.get_int64().get(n) || n < 0)
            return invalid(std::string("\"") + key + "\" must be a non-negative integer");
        req.maxOutputTokens = std::max(req.maxOutputTokens, n);
    }
    return {};
}

// The fields only one API has: OpenAI's "n", the Responses API's
// "previous_response_id", and Anthropic's required "max_tokens".
Result<void> readFormatFields(ApiFormat format, BodyPurpose purpose, simdjson::dom::object obj,
                              ClientRequest& req) {
    simdjson::dom::element v;
    if (format == ApiFormat::OpenAI && !obj["n"].get(v) && !v.is_null()) {
        std::int64_t n = 0;
        if (v.get_int64().get(n) || n < 1 || n > kMaxChoices)
            return invalid("\"n\" must be an integer from 1 to " + std::to_string(kMaxChoices));
        req.choices = n;
    }
    if (format == ApiFormat::Responses && !obj["previous_response_id"].get(v) && !v.is_null()) {
        std::string_view prev;
        if (v.get_string().get(prev))
            return invalid("\"previous_response_id\" must be a string");
        req.previousResponseId = std::string(prev);
    }
    if (format == ApiFormat::Anthropic && purpose == BodyPurpose::Generate &&
        req.maxOutputTokens < 0)
        return invalid("missing required field \"max_tokens\"");
    return {};
}

} // namespace

Result<ClientRequest> parseClientRequest(ApiFormat format, std::string_view body,
                                         BodyPurpose purpose) {
    thread_local simdjson::dom::parser parser;
    simdjson::padded_string padded(body);
    simdjson::dom::element doc;
    if (auto err = parser.parse(padded).get(doc))
        return bodyParseError(err, body);
    simdjson::dom::object obj;
    if (doc.get_object().get(obj))
        return invalid("the body must be a JSON object");

    if (auto r = rejectDuplicates(obj, ""); !r)
        return r.error();

    ClientRequest req;
    if (auto r = readModel(obj, req); !r)
        return r.error();
    if (auto r = readStreaming(obj, req); !r)
        return r.error();
    if (auto r = readMaxOutputTokens(obj, req); !r)
        return r.error();
    if (auto r = readFormatFields(format, purpose, obj, req); !r)
        return r.error();
    return req;
}

std::string rewriteForUpstream(ApiFormat format, std::string_view body, const ClientRequest& req,
                               std::string_view upstreamModel) {
    // Edits as (begin, end, replacement), applied back to front.
    struct Edit {
        std::size_t begin, end;
        std::string text;
    };
    std::vector<Edit> edits;
    std::size_t close = 0;
    auto ms = members(body, skipWs(body, 0), &close);
    if (const Member* m = findKey(ms, "model"); m && upstreamModel != req.model)
        edits.push_back({m->valueBegin, m->valueEnd, jsonQuote(upstreamModel)});

    if (format == ApiFormat::OpenAI && req.stream && !req.clientAskedUsage) {
        const Member* so = findKey(ms, "stream_options");
        if (!so || body.substr(so->valueBegin, 4) == "null") {
            if (so) {
                edits.push_back({so->valueBegin, so->valueEnd, "{\"include_usage\":true}"});
            } else {
                edits.push_back({close, close, ",\"stream_options\":{\"include_usage\":true}"});
            }
        } else {
            std::size_t soClose = 0;
            auto inner = members(body, so->valueBegin, &soClose);
            if (const Member* iu = findKey(inner, "include_usage"))
                edits.push_back({iu->valueBegin, iu->valueEnd, "true"});
            else
                edits.push_back(
                    {so->valueBegin + 1, so->valueBegin + 1,
                     inner.empty() ? "\"include_usage\":true" : "\"include_usage\":true,"});
        }
    }
    std::string out(body);
    std::sort(edits.begin(), edits.end(),
              [](const Edit& a, const Edit& b) { return a.begin > b.begin; });
    for (const auto& e : edits)
        out.replace(e.begin, e.end - e.begin, e.text);
    return out;
}

bool isUsageOnlyChunk(std::string_view data) {
    thread_local simdjson::dom::parser parser;
    simdjson::padded_string padded(data);
    simdjson::dom::element doc;
    if (parser.parse(padded).get(doc))
        return false;
    simdjson::dom::array choices;
    simdjson::dom::element usage;
    if (doc["usage"].get(usage) || usage.is_null())
        return false;
    if (doc["choices"].get_array().get(choices))
        return true;
    return choices.size() == 0;
}

} // namespace trollproxy::internal
