// OpenAI's Responses API as its server sends it: the response object, whole or as the
// typed SSE events (event: NAME, data: JSON with type and sequence_number).
#include "responses_wire.hpp"

#include <cstdio>

#include <simdjson.h>

namespace fake {

namespace {

std::string num(std::int64_t v) {
    return std::to_string(v);
}

std::string messageText(const ResponsesAnswer& a) {
    std::string text;
    for (int i = 0; i < a.chunks; ++i)
        text += chunkText(i);
    return text;
}

std::string toolArgs(const ResponsesAnswer& a) {
    std::string args;
    for (int i = 0; i < a.chunks; ++i)
        args += toolArgsPiece(i, a.chunks);
    return args;
}

// The reasoning summary, in the pieces its deltas carry.
const char* const kSummary[] = {"**Answering briefly**\n\n", "The user wants a short reply."};

std::string summaryText() {
    return std::string(kSummary[0]) + kSummary[1];
}

std::string itemId(const char* prefix, const ResponsesAnswer& a) {
    return prefix + a.id.substr(a.id.find('_') + 1);
}

const char* itemStatus(const ResponsesAnswer& a) {
    return a.incomplete ? "incomplete" : "completed";
}

std::string reasoningItem(const ResponsesAnswer& a, bool done) {
    std::string item =
        "{\"id\":" + quote(itemId("rs_", a)) + ",\"type\":\"reasoning\",\"summary\":[";
    if (done)
        item += "{\"type\":\"summary_text\",\"text\":" + quote(summaryText()) + "}";
    item += "]";
    if (done && a.encryptedReasoning)
        item += ",\"encrypted_content\":" +
                quote("gAAAAAB" + itemId("", a) + "fakeEncryptedReasoning==");
    return item + "}";
}

std::string outputText(const std::string& text) {
    return "{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":" + quote(text) +
           "}";
}

// The answer item: a message, or a function call when the test asked for one.
std::string answerItem(const ResponsesAnswer& a, bool done) {
    const char* status = done ? itemStatus(a) : "in_progress";
    if (!a.toolName.empty())
        return "{\"id\":" + quote(itemId("fc_", a)) + ",\"type\":\"function_call\",\"status\":\"" +
               status + "\",\"arguments\":" + quote(done ? toolArgs(a) : "") +
               ",\"call_id\":" + quote(itemId("call_", a)) + ",\"name\":" + quote(a.toolName) + "}";
    return "{\"id\":" + quote(itemId("msg_", a)) + ",\"type\":\"message\",\"status\":\"" + status +
           "\",\"content\":[" + (done ? outputText(messageText(a)) : "") +
           "],\"role\":\"assistant\"}";
}

// Numbers the events of one stream.
class EventWriter {
public:
    std::string operator()(const std::string& type, const std::string& fields) {
        return "event: " + type + "\ndata: {\"type\":" + quote(type) +
               ",\"sequence_number\":" + num(seq_++) + (fields.empty() ? "" : "," + fields) +
               "}\n\n";
    }

private:
    std::int64_t seq_ = 0;
};

// Request settings the response object repeats, with what the API reports when they are absent.
struct Echoed {
    const char* key;
    const char* absent;
};
const Echoed kEchoed[] = {
    {"instructions", "null"},
    {"max_output_tokens", "null"},
    {"parallel_tool_calls", "true"},
    {"previous_response_id", "null"},
    {"prompt_cache_key", "null"},
    {"reasoning", "{\"effort\":null,\"summary\":null}"},
    {"temperature", "1.0"},
    {"text", "{\"format\":{\"type\":\"text\"},\"verbosity\":\"medium\"}"},
    {"tool_choice", "\"auto\""},
    {"tools", "[]"},
    {"top_p", "1.0"},
    {"truncation", "\"disabled\""},
    {"metadata", "{}"},
};

} // namespace

bool readResponsesRequest(const std::string& body, ResponsesAnswer& a, bool& stream,
                          std::string& firstFunction) {
    simdjson::dom::parser parser;
    simdjson::dom::object doc;
    if (parser.parse(body).get_object().get(doc))
        return false;
    std::string_view s;
    bool b = false;
    simdjson::dom::element el;
    if (!doc["model"].get_string().get(s))
        a.model = s;
    if (!doc["stream"].get_bool().get(b))
        stream = b;
    if (!doc["store"].get_bool().get(b))
        a.store = b;
    a.reasoning = !doc["reasoning"].get(el) && !el.is_null();
    simdjson::dom::array list;
    if (!doc["include"].get_array().get(list))
        for (simdjson::dom::element inc : list)
            a.encryptedReasoning |= !inc.get_string().get(s) && s == "reasoning.encrypted_content";
    if (!doc["input"].get_array().get(list) && list.size() > 0) {
        std::string_view type;
        a.afterToolOutput = !list.at(list.size() - 1)["type"].get_string().get(type) &&
                            type == "function_call_output";
    }
    if (!doc["tools"].get_array().get(list))
        for (simdjson::dom::element t : list) {
            std::string_view type, name;
            if (!t["type"].get_string().get(type) && type == "function" &&
                !t["name"].get_string().get(name)) {
                firstFunction = name;
                break;
            }
        }
    a.echo.clear();
    for (const Echoed& e : kEchoed) {
        bool given = !doc[e.key].get(el) && !el.is_null();
        a.echo += quote(e.key) + ":" + (given ? simdjson::minify(el) : std::string(e.absent)) + ",";
    }
    return true;
}

std::string responsesUsage(const ResponsesAnswer& a) {
    const Tokens& t = a.tokens;
    std::int64_t input = t.input + t.cacheRead;
    return "{\"input_tokens\":" + num(input) +
           ",\"input_tokens_details\":{\"cached_tokens\":" + num(t.cacheRead) +
           "},\"output_tokens\":" + num(t.output) +
           ",\"output_tokens_details\":{\"reasoning_tokens\":" + num(a.reasoningTokens) +
           "},\"total_tokens\":" + num(input + t.output) + "}";
}

std::string responsesObject(const ResponsesAnswer& a, bool done) {
    std::string status = done ? itemStatus(a) : "in_progress";
    std::string output;
    if (done)
        output = (a.reasoning ? reasoningItem(a, true) + "," : "") + answerItem(a, true);
    std::string usage = !done           ? ",\"usage\":null"
                        : a.reportUsage ? ",\"usage\":" + responsesUsage(a)
                                        : "";
    std::string echo = a.echo;
    if (echo.empty())
        for (const Echoed& e : kEchoed)
            echo += quote(e.key) + ":" + e.absent + ",";
    return "{\"id\":" + quote(a.id) +
           ",\"object\":\"response\",\"created_at\":" + num(a.createdAt) + ",\"status\":\"" +
           status + "\",\"background\":false,\"completed_at\":" +
           (done && !a.incomplete ? num(a.createdAt + 1) : "null") +
           ",\"error\":null,\"incomplete_details\":" +
           (done && a.incomplete ? "{\"reason\":\"max_output_tokens\"}" : "null") + "," + echo +
           "\"max_tool_calls\":null,\"model\":" + quote(a.model) + ",\"output\":[" + output +
           "],\"safety_identifier\":null,\"service_tier\":\"default\",\"store\":" +
           (a.store ? "true" : "false") + ",\"top_logprobs\":0" + usage + ",\"user\":null}";
}

ResponsesEvents responsesEvents(const ResponsesAnswer& a) {
    EventWriter event;
    ResponsesEvents out;
    std::string progress = responsesObject(a, false);
    // One event per statement: the sequence numbers follow the order of evaluation.
    out.head = event("response.created", "\"response\":" + progress);
    out.head += event("response.in_progress", "\"response\":" + progress);
    int index = 0;
    if (a.reasoning) {
        std::string at =
            "\"item_id\":" + quote(itemId("rs_", a)) + ",\"output_index\":0,\"summary_index\":0";
        std::string part = "\"part\":{\"type\":\"summary_text\",\"text\":";
        out.head += event("response.output_item.added",
                          "\"output_index\":0,\"item\":" + reasoningItem(a, false));
        out.head += event("response.reasoning_summary_part.added", at + "," + part + "\"\"}");
        for (const char* piece : kSummary)
            out.head +=
                event("response.reasoning_summary_text.delta", at + ",\"delta\":" + quote(piece));
        out.head +=
            event("response.reasoning_summary_text.done", at + ",\"text\":" + quote(summaryText()));
        out.head += event("response.reasoning_summary_part.done",
                          at + "," + part + quote(summaryText()) + "}");
        out.head += event("response.output_item.done",
                          "\"output_index\":0,\"item\":" + reasoningItem(a, true));
        index = 1;
    }
    std::string outIndex = "\"output_index\":" + num(index);
    out.head += event("response.output_item.added", outIndex + ",\"item\":" + answerItem(a, false));
    if (a.toolName.empty()) {
        std::string at =
            "\"item_id\":" + quote(itemId("msg_", a)) + "," + outIndex + ",\"content_index\":0";
        out.head += event("response.content_part.added", at + ",\"part\":" + outputText(""));
        for (int i = 0; i < a.chunks; ++i)
            out.deltas.push_back(
                event("response.output_text.delta",
                      at + ",\"delta\":" + quote(chunkText(i)) + ",\"logprobs\":[]"));
        std::string text = messageText(a);
        out.tail = event("response.output_text.done",
                         at + ",\"text\":" + quote(text) + ",\"logprobs\":[]");
        out.tail += event("response.content_part.done", at + ",\"part\":" + outputText(text));
    } else {
        std::string at = "\"item_id\":" + quote(itemId("fc_", a)) + "," + outIndex;
        for (int i = 0; i < a.chunks; ++i)
            out.deltas.push_back(event("response.function_call_arguments.delta",
                                       at + ",\"delta\":" + quote(toolArgsPiece(i, a.chunks))));
        out.tail =
            event("response.function_call_arguments.done",
                  at + ",\"name\":" + quote(a.toolName) + ",\"arguments\":" + quote(toolArgs(a)));
    }
    out.tail += event("response.output_item.done", outIndex + ",\"item\":" + answerItem(a, true));
    out.tail += event(a.incomplete ? "response.incomplete" : "response.completed",
                      "\"response\":" + responsesObject(a, true));
    return out;
}

std::string responsesDeleted(const std::string& id) {
    return "{\"id\":" + quote(id) + ",\"object\":\"response.deleted\",\"deleted\":true}";
}

std::string countTokensAnswer(const std::string& body) {
    return "{\"input_tokens\":" + num(static_cast<std::int64_t>(body.size() / 4)) + "}";
}

std::string ResponsesStore::newId() {
    std::lock_guard lock(mutex_);
    char buf[64];
    std::snprintf(buf, sizeof buf, "resp_fake%040llx", static_cast<unsigned long long>(++next_));
    return buf;
}

void ResponsesStore::put(const std::string& id, std::string json) {
    std::lock_guard lock(mutex_);
    if (byId_.insert_or_assign(id, std::move(json)).second)
        order_.push_back(id);
    while (order_.size() > 1000) {
        byId_.erase(order_.front());
        order_.pop_front();
    }
}

bool ResponsesStore::get(const std::string& id, std::string& json) const {
    std::lock_guard lock(mutex_);
    auto it = byId_.find(id);
    if (it == byId_.end())
        return false;
    json = it->second;
    return true;
}

bool ResponsesStore::remove(const std::string& id) {
    std::lock_guard lock(mutex_);
    return byId_.erase(id) > 0; // its place in order_ goes when it reaches the front
}

} // namespace fake
