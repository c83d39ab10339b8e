// MongoLedger::releaseHolds: gives back the holds of a process that died, found by
// their request ids' prefix.
#include <utility>
#include <vector>

#include "ledger/mongo_ledger_impl.hpp"

namespace trollproxy::internal::mongo {

namespace {

using Holds = std::vector<std::pair<std::string, std::string>>; // user, request id

// The holds of user d whose request id starts with prefix. Holds taken before
// they carried their id (`requestId`) go by their key, fieldSafe(id).
void collectByPrefix(const bson_t* d, const std::string& user, std::string_view prefix,
                     Holds& out) {
    bson_iter_t sub, entry;
    if (!bson_iter_init_find(&sub, d, "trollproxyHolds") || !BSON_ITER_HOLDS_DOCUMENT(&sub) ||
        !bson_iter_recurse(&sub, &entry))
        return;
    while (bson_iter_next(&entry)) {
        std::string id = bson_iter_key(&entry);
        bson_iter_t field;
        if (BSON_ITER_HOLDS_DOCUMENT(&entry) && bson_iter_recurse(&entry, &field) &&
            bson_iter_find(&field, "requestId") && BSON_ITER_HOLDS_UTF8(&field))
            id = bson_iter_utf8(&field, nullptr);
        if (std::string_view(id).substr(0, prefix.size()) == prefix)
            out.emplace_back(user, std::move(id));
    }
}

} // namespace

Result<std::int64_t> MongoLedger::releaseHolds(std::string_view requestIdPrefix) {
    if (requestIdPrefix.empty())
        return Error{ErrorCode::InvalidArgument,
                     "an empty request id prefix would release every hold"};
    // Hold ids are field names, which a query cannot match by prefix: read the users
    // with holds (only that field) and compare here, literally.
    Holds found;
    {
        Coll c(pool_, db_, "usersNew");
        Doc filter, opts;
        bson_t cond, proj;
        BSON_APPEND_DOCUMENT_BEGIN(filter.get(), "trollproxyHolds", &cond);
        BSON_APPEND_BOOL(&cond, "$exists", true);
        bson_append_document_end(filter.get(), &cond);
        BSON_APPEND_DOCUMENT_BEGIN(opts.get(), "projection", &proj);
        BSON_APPEND_INT32(&proj, "trollproxyHolds", 1);
        bson_append_document_end(opts.get(), &proj);
        mongoc_cursor_t* cur =
            mongoc_collection_find_with_opts(c.get(), filter.get(), opts.get(), nullptr);
        const bson_t* d = nullptr;
        while (mongoc_cursor_next(cur, &d)) {
            bson_iter_t it;
            if (bson_iter_init_find(&it, d, "_id"))
                collectByPrefix(d, internal::userNameOf(&it), requestIdPrefix, found);
        }
        bson_error_t err;
        bool failed = mongoc_cursor_error(cur, &err);
        mongoc_cursor_destroy(cur);
        if (failed)
            return Error{ErrorCode::Unavailable, std::string("MongoDB: ") + err.message};
    }
    // Each one a compare-and-set, as the sweep's: a settle of the same request that
    // wins the race took the hold, and then there is nothing to give back.
    std::int64_t n = 0;
    for (const auto& [user, id] : found) {
        bool gaveBack = false;
        Cas r = releaseOn(user, id, gaveBack);
        if (r == Cas::Unavailable)
            return Error{ErrorCode::Unavailable, "MongoDB is unavailable"};
        if (r == Cas::Applied && gaveBack)
            ++n;
        std::lock_guard lock(ownersMutex_);
        holdOwner_.erase(id);
    }
    return n;
}

} // namespace trollproxy::internal::mongo
