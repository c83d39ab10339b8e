// The access log line, written with JsonWriter.
#include "proxy/access_log.hpp"

#include <cstdio>

#include "core/json_writer.hpp"

namespace trollproxy::internal {

std::string accessLine(const AccessRecord& r) {
    JsonWriter w;
    w.beginObject()
        .field("ts", r.timestampMs)
        .field("request_id", r.requestId)
        .field("user", r.user)
        .field("model", r.model)
        .field("route", r.route)
        .field("status", r.status);
    if (const Usage* u = r.usage) {
        w.field("input", u->uncachedInput)
            .field("output", u->output)
            .field("cache_write", u->cacheWrite)
            .field("cache_read", u->cacheRead)
            .field("estimated", u->estimated);
    }
    w.field("cost", r.charged.toString());
    if (r.shortfall.nanos > 0)
        w.field("shortfall", r.shortfall.toString());
    w.field("pool", r.pool).field("latency_ms", r.latencyMs);
    if (!r.note.empty())
        w.field("note", r.note);
    std::string line = w.endObject().take();
    line.push_back('\n');
    return line;
}

void writeAccessLog(const AccessRecord& record) {
    std::string line = accessLine(record);
    std::fwrite(line.data(), 1, line.size(), stderr);
}

} // namespace trollproxy::internal
