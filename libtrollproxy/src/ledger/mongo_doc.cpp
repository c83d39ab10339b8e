// Typed reads and compare-and-set filters over libbson documents.
#include "ledger/mongo_doc.hpp"

#include <cstring>
#include <optional>

namespace trollproxy::internal {

void appendUserId(bson_t* doc, const char* key, const std::string& name) {
    if (name.size() == 28 && name.rfind("oid:", 0) == 0 &&
        bson_oid_is_valid(name.c_str() + 4, 24)) {
        bson_oid_t oid;
        bson_oid_init_from_string(&oid, name.c_str() + 4);
        BSON_APPEND_OID(doc, key, &oid);
        return;
    }
    bson_append_utf8(doc, key, -1, name.data(), static_cast<int>(name.size()));
}

std::string userNameOf(const bson_iter_t* it) {
    switch (bson_iter_type(it)) {
    case BSON_TYPE_UTF8: {
        uint32_t len = 0;
        const char* s = bson_iter_utf8(it, &len);
        return std::string(s, len);
    }
    case BSON_TYPE_OID: {
        char hex[25];
        bson_oid_to_string(bson_iter_oid(it), hex);
        return std::string("oid:") + hex;
    }
    case BSON_TYPE_INT32:
        return std::to_string(bson_iter_int32(it));
    case BSON_TYPE_INT64:
        return std::to_string(bson_iter_int64(it));
    default:
        return {};
    }
}

namespace {
bool find(const bson_t* doc, const char* path, bson_iter_t& it) {
    bson_iter_t root;
    return bson_iter_init(&root, doc) && bson_iter_find_descendant(&root, path, &it);
}
} // namespace

std::optional<Money> moneyField(const bson_t* doc, const char* path) {
    bson_iter_t it;
    if (!find(doc, path, it))
        return std::nullopt;
    switch (bson_iter_type(&it)) {
    case BSON_TYPE_DOUBLE:
        return Money::fromUsdDouble(bson_iter_double(&it));
    case BSON_TYPE_INT32:
        return Money{static_cast<std::int64_t>(bson_iter_int32(&it)) * Money::kNanosPerUsd};
    case BSON_TYPE_INT64:
        return Money{bson_iter_int64(&it) * Money::kNanosPerUsd};
    default:
        return std::nullopt;
    }
}

std::int64_t intField(const bson_t* doc, const char* path, std::int64_t fallback) {
    bson_iter_t it;
    if (!find(doc, path, it))
        return fallback;
    switch (bson_iter_type(&it)) {
    case BSON_TYPE_INT32:
        return bson_iter_int32(&it);
    case BSON_TYPE_INT64:
        return bson_iter_int64(&it);
    case BSON_TYPE_DOUBLE:
        return static_cast<std::int64_t>(bson_iter_double(&it));
    default:
        return fallback;
    }
}

std::optional<bool> boolField(const bson_t* doc, const char* path) {
    bson_iter_t it;
    if (!find(doc, path, it) || bson_iter_type(&it) == BSON_TYPE_NULL)
        return std::nullopt;
    return bson_iter_as_bool(&it);
}

std::string stringField(const bson_t* doc, const char* path) {
    bson_iter_t it;
    if (!find(doc, path, it) || bson_iter_type(&it) != BSON_TYPE_UTF8)
        return {};
    uint32_t len = 0;
    const char* s = bson_iter_utf8(&it, &len);
    return std::string(s, len);
}

std::optional<std::int64_t> timeField(const bson_t* doc, const char* path) {
    bson_iter_t it;
    if (!find(doc, path, it))
        return std::nullopt;
    switch (bson_iter_type(&it)) {
    case BSON_TYPE_DATE_TIME:
        return bson_iter_date_time(&it);
    case BSON_TYPE_INT64:
        return bson_iter_int64(&it);
    case BSON_TYPE_INT32:
        return bson_iter_int32(&it);
    case BSON_TYPE_DOUBLE:
        return static_cast<std::int64_t>(bson_iter_double(&it));
    default:
        return std::nullopt;
    }
}

void appendSameAs(bson_t* filter, const char* key, const bson_t* doc, const char* path) {
    bson_iter_t it;
    if (find(doc, path, it)) {
        bson_append_value(filter, key, -1, bson_iter_value(&it));
        return;
    }
    bson_t sub;
    bson_append_document_begin(filter, key, -1, &sub);
    BSON_APPEND_BOOL(&sub, "$exists", false);
    bson_append_document_end(filter, &sub);
}

void appendLogEntry(bson_t* s, const LogEntry& e, const char* pool) {
    BSON_APPEND_UTF8(s, "requestId", e.requestId.c_str());
    BSON_APPEND_UTF8(s, "userId", e.userId.c_str());
    BSON_APPEND_UTF8(s, "userKeyId", e.keyId.c_str());
    BSON_APPEND_UTF8(s, "model", e.model.c_str());
    BSON_APPEND_INT64(s, "inputTokens", e.usage.uncachedInput);
    BSON_APPEND_INT64(s, "outputTokens", e.usage.output);
    BSON_APPEND_INT64(s, "cacheWriteTokens", e.usage.cacheWrite);
    BSON_APPEND_INT64(s, "cacheHitTokens", e.usage.cacheRead);
    BSON_APPEND_DOUBLE(s, "creditsCost", e.cost.toUsdDouble());
    BSON_APPEND_INT64(s, "creditsCostNanos", e.cost.nanos);
    BSON_APPEND_DOUBLE(s, "shortfall", e.shortfall.toUsdDouble());
    BSON_APPEND_INT64(s, "shortfallNanos", e.shortfall.nanos);
    BSON_APPEND_INT64(s, "tokensUsed", e.usage.totalInput() + e.usage.output);
    BSON_APPEND_INT32(s, "statusCode", e.statusCode);
    BSON_APPEND_INT64(s, "latencyMs", e.latencyMs);
    BSON_APPEND_BOOL(s, "isSuccess", e.success);
    BSON_APPEND_UTF8(s, "creditType", e.creditType.c_str());
    if (pool)
        BSON_APPEND_UTF8(s, "pool", pool);
    BSON_APPEND_BOOL(s, "estimated", e.usage.estimated);
    BSON_APPEND_DATE_TIME(s, "createdAt", e.createdAtMs);
    if (!e.responseId.empty())
        BSON_APPEND_UTF8(s, "responseId", e.responseId.c_str());
}

namespace {

// FNV-1a, then MurmurHash3's finalizer so that every input bit reaches every output bit.
std::uint64_t hash64(std::string_view s, std::uint64_t seed = 0xcbf29ce484222325ULL) {
    std::uint64_t h = seed;
    for (unsigned char c : s)
        h = (h ^ c) * 0x100000001b3ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

} // namespace

std::optional<std::uint64_t> requestIdTimeMs(std::string_view id) {
    constexpr std::size_t kDigits = 24, kTimeDigits = 11;
    if (id.size() <= kDigits || id[id.size() - kDigits - 1] != '_')
        return std::nullopt;
    std::uint64_t ms = 0;
    for (std::size_t i = id.size() - kDigits; i < id.size(); ++i) {
        char c = id[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return std::nullopt;
        if (i < id.size() - kDigits + kTimeDigits)
            ms = ms * 16 + static_cast<std::uint64_t>(d);
    }
    return ms;
}

void appendIndexedString(bson_t* doc, const char* key, std::string_view value) {
    bson_t cond;
    bson_append_document_begin(doc, key, -1, &cond);
    BSON_APPEND_UTF8(&cond, "$type", "string");
    bson_append_utf8(&cond, "$eq", -1, value.data(), static_cast<int>(value.size()));
    bson_append_document_end(doc, &cond);
}

void logEntryId(std::string_view requestId, bson_oid_t* oid) {
    std::uint64_t h = hash64(requestId);
    std::optional<std::uint64_t> ms = requestIdTimeMs(requestId);
    // An id without its time (another format) gets 4 more bytes of hash instead.
    auto seconds = static_cast<std::uint32_t>(ms ? *ms / 1000 : hash64(requestId, h));
    for (int i = 0; i < 4; ++i)
        oid->bytes[i] = static_cast<std::uint8_t>(seconds >> (24 - 8 * i));
    for (int i = 0; i < 8; ++i)
        oid->bytes[4 + i] = static_cast<std::uint8_t>(h >> (56 - 8 * i));
}

LogEntry logEntryFrom(const bson_t* d) {
    LogEntry e;
    e.requestId = stringField(d, "requestId");
    e.userId = stringField(d, "userId");
    e.keyId = stringField(d, "userKeyId");
    e.model = stringField(d, "model");
    e.usage = Usage{intField(d, "inputTokens"), intField(d, "cacheWriteTokens"),
                    intField(d, "cacheHitTokens"), intField(d, "outputTokens"),
                    boolField(d, "estimated").value_or(false)};
    bson_iter_t it;
    bool exact = bson_iter_init_find(&it, d, "creditsCostNanos");
    e.cost = exact ? Money{intField(d, "creditsCostNanos")}
                   : moneyField(d, "creditsCost").value_or(Money{});
    e.shortfall = Money{intField(d, "shortfallNanos")};
    e.creditType = stringField(d, "creditType");
    e.statusCode = static_cast<int>(intField(d, "statusCode"));
    e.latencyMs = intField(d, "latencyMs");
    e.success = boolField(d, "isSuccess").value_or(false);
    e.createdAtMs = timeField(d, "createdAt").value_or(0);
    e.responseId = stringField(d, "responseId");
    return e;
}

} // namespace trollproxy::internal
