// Small helpers over libbson for the MongoDB ledger: owned documents, typed reads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <bson/bson.h>

#include "trollproxy/ledger.hpp"
#include "trollproxy/money.hpp"

namespace trollproxy::internal {

/// An owned bson_t.
class Doc {
public:
    Doc() { bson_init(&b_); }
    explicit Doc(const bson_t* src) { bson_copy_to(src, &b_); }
    ~Doc() { bson_destroy(&b_); }
    Doc(const Doc&) = delete;
    Doc& operator=(const Doc&) = delete;
    bson_t* get() { return &b_; }
    const bson_t* get() const { return &b_; }

private:
    bson_t b_;
};

/// A user `_id` from the name trollproxy shows: "oid:<24 hex>" is an ObjectId
/// (test servers that cannot store string ids), anything else the string itself.
void appendUserId(bson_t* doc, const char* key, const std::string& name);
/// The name for a stored `_id` value (the inverse of appendUserId).
std::string userNameOf(const bson_iter_t* idIter);

/// Reads a numeric field (double, int32, int64) as Money; nullopt when absent.
std::optional<Money> moneyField(const bson_t* doc, const char* dottedPath);
std::int64_t intField(const bson_t* doc, const char* dottedPath, std::int64_t fallback = 0);
std::optional<bool> boolField(const bson_t* doc, const char* dottedPath);
std::string stringField(const bson_t* doc, const char* dottedPath);
/// A date, int64 or double field as epoch milliseconds.
std::optional<std::int64_t> timeField(const bson_t* doc, const char* dottedPath);

/// Appends `key: value` where value copies the field at `path` of `doc`
/// exactly (same BSON type), or `key: {$exists: false}` when it is absent:
/// the filter of a compare-and-set on that field.
void appendSameAs(bson_t* filter, const char* key, const bson_t* doc, const char* path);

/// Appends the fields of a `request_logs` document (production's names, plus
/// requestId, exact *Nanos amounts, shortfall, pool, estimated). `pool` may be null.
void appendLogEntry(bson_t* doc, const LogEntry& entry, const char* pool);
/// The `_id` of a request's log entry, a function of its request id alone: every
/// writer of one entry (a batch, a retry, the sweep, another process) inserts the
/// same `_id`, and the `_id` index, which every MongoDB server keeps unique, refuses
/// the second. An ObjectId whose first 4 bytes are the request's second where the
/// id carries its time (trollproxy's do: "..._" + 11 hex digits of milliseconds +
/// 13 more) and whose other 8 are a 64-bit hash of the id. Two ids can share one:
/// a writer that meets a duplicate reads the stored entry's requestId before it
/// calls the entry written.
void logEntryId(std::string_view requestId, bson_oid_t* oid);
/// Appends `key: {$type: "string", $eq: value}`: a lookup by a field whose index is
/// partial, on string values only (`trollproxy_requestId`, `trollproxy_responseId`).
/// A server uses a partial index only for a query that states the index's filter;
/// `{key: value}` alone scans the collection.
void appendIndexedString(bson_t* doc, const char* key, std::string_view value);
/// The milliseconds since the epoch in a request id of trollproxy's format
/// ("<prefix>_" + 11 hex digits of milliseconds + 13 more); nullopt for another.
/// Of two ids with one prefix, the earlier sorts first.
std::optional<std::uint64_t> requestIdTimeMs(std::string_view requestId);
/// Reads a `request_logs` document (exact *Nanos amounts when present).
LogEntry logEntryFrom(const bson_t* doc);

} // namespace trollproxy::internal
