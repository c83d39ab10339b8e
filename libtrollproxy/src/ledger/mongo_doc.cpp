// Typed reads and compare-and-set filters over libbson documents.
#include "ledger/mongo_doc.hpp"

#include <cstring>

namespace trollproxy::internal {

void appendUserId(bson_t* doc, const char* key, const std::string& name) {
    if (name.size() == 28 && name.rfind("oid:", 0) == 0 && bson_oid_is_valid(name.c_str() + 4, 24)) {
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

} // namespace trollproxy::internal
