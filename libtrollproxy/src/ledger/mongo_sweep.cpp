// MongoLedger's sweep: gives back expired holds and writes the log entries of
// settlements a crashed process left pending.
#include <memory>
#include <utility>
#include <vector>

#include "ledger/mongo_ledger_impl.hpp"

namespace trollproxy::internal::mongo {

namespace {

// A marker younger than this may belong to a settle still running.
constexpr std::int64_t kPendingGraceMs = 30'000;

using ExpiredHolds = std::vector<std::pair<std::string, std::string>>;         // user, request id
using PendingLogs = std::vector<std::pair<std::string, std::unique_ptr<Doc>>>; // user, log entry

// The users with a hold or a pending settlement, and only those two fields of theirs.
void appendSweepQuery(bson_t* filter, bson_t* opts) {
    bson_t list, alt, cond, proj;
    BSON_APPEND_ARRAY_BEGIN(filter, "$or", &list);
    const char* owned[2] = {"trollproxyHolds", "trollproxyPending"};
    for (int i = 0; i < 2; ++i) {
        bson_append_document_begin(&list, i == 0 ? "0" : "1", -1, &alt);
        bson_append_document_begin(&alt, owned[i], -1, &cond);
        BSON_APPEND_BOOL(&cond, "$exists", true);
        bson_append_document_end(&alt, &cond);
        bson_append_document_end(&list, &alt);
    }
    bson_append_array_end(filter, &list);
    BSON_APPEND_DOCUMENT_BEGIN(opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "trollproxyHolds", 1);
    BSON_APPEND_INT32(&proj, "trollproxyPending", 1);
    bson_append_document_end(opts, &proj);
}

// The holds of user d that expired before now.
void collectExpired(const bson_t* d, const std::string& user, std::int64_t now,
                    ExpiredHolds& expired) {
    bson_iter_t sub, entry;
    if (bson_iter_init_find(&sub, d, "trollproxyHolds") && BSON_ITER_HOLDS_DOCUMENT(&sub) &&
        bson_iter_recurse(&sub, &entry)) {
        while (bson_iter_next(&entry)) {
            bson_iter_t exp;
            if (bson_iter_recurse(&entry, &exp) && bson_iter_find(&exp, "expiresAt") &&
                bson_iter_as_int64(&exp) < now)
                expired.emplace_back(user, bson_iter_key(&entry));
        }
    }
}

// The log entries of user d's pending markers older than the grace time.
void collectPending(const bson_t* d, const std::string& user, std::int64_t now,
                    PendingLogs& pending) {
    bson_iter_t sub, entry;
    if (bson_iter_init_find(&sub, d, "trollproxyPending") && BSON_ITER_HOLDS_DOCUMENT(&sub) &&
        bson_iter_recurse(&sub, &entry)) {
        while (bson_iter_next(&entry)) {
            if (!BSON_ITER_HOLDS_DOCUMENT(&entry))
                continue;
            uint32_t len = 0;
            const uint8_t* data = nullptr;
            bson_iter_document(&entry, &len, &data);
            bson_t marker;
            if (!bson_init_static(&marker, data, len) ||
                internal::intField(&marker, "at", INT64_MAX) >= now - kPendingGraceMs)
                continue;
            auto record = std::make_unique<Doc>();
            bson_copy_to_excluding_noinit(&marker, record->get(), "at", nullptr);
            pending.emplace_back(user, std::move(record));
        }
    }
}

} // namespace

Result<std::int64_t> MongoLedger::sweepExpiredHolds(std::int64_t now) {
    // Also finishes settlements whose money moved but whose log entry a crashed
    // process never wrote (the pending marker holds the whole entry).
    Coll c(pool_, db_, "usersNew");
    Doc filter, opts;
    appendSweepQuery(filter.get(), opts.get());
    mongoc_cursor_t* cur =
        mongoc_collection_find_with_opts(c.get(), filter.get(), opts.get(), nullptr);
    ExpiredHolds expired;
    PendingLogs pending;
    const bson_t* d = nullptr;
    while (mongoc_cursor_next(cur, &d)) {
        bson_iter_t it;
        std::string user;
        if (bson_iter_init_find(&it, d, "_id"))
            user = internal::userNameOf(&it);
        collectExpired(d, user, now, expired);
        collectPending(d, user, now, pending);
    }
    bson_error_t err;
    bool failed = mongoc_cursor_error(cur, &err);
    mongoc_cursor_destroy(cur);
    if (failed)
        return Error{ErrorCode::Unavailable, std::string("MongoDB: ") + err.message};
    for (const auto& [user, record] : pending) {
        if (writeLog(record->get()) != Write::Failed)
            unsetPending(user, internal::stringField(record->get(), "requestId"));
    }
    std::int64_t n = 0;
    for (const auto& [user, id] : expired) {
        if (releaseOn(user, id) == Cas::Applied)
            ++n;
    }
    return n;
}

} // namespace trollproxy::internal::mongo
