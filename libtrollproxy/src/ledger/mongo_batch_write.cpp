// settleBatch()'s round trips besides the users' compare-and-sets: which ids are logged
// already (one find), the log entries (one bulk), the markers and the keys' statistics
// (one bulk each).
#include "ledger/key_use.hpp"
#include "ledger/mongo_ledger_impl.hpp"

namespace trollproxy::internal::mongo {

namespace {

// Runs an unordered bulk of update_one(filter, update) pairs; false when nothing can
// be said about it (invalid input or no answer). reply is set in any case.
template <typename Fill>
bool runBulk(mongoc_collection_t* coll, bson_t* reply, bson_error_t* err, Fill&& fill) {
    Doc opts;
    BSON_APPEND_BOOL(opts.get(), "ordered", false);
    mongoc_bulk_operation_t* bulk =
        mongoc_collection_create_bulk_operation_with_opts(coll, opts.get());
    bool ok = fill(bulk);
    if (ok)
        ok = mongoc_bulk_operation_execute(bulk, reply, err) != 0;
    else
        bson_init(reply);
    mongoc_bulk_operation_destroy(bulk);
    return ok;
}

// Reads the index (into the bulk) of each entry of the reply's array `field`.
template <typename Each> void eachIndexed(const bson_t* reply, const char* field, Each&& each) {
    bson_iter_t it, entry;
    if (!bson_iter_init_find(&it, reply, field) || !BSON_ITER_HOLDS_ARRAY(&it) ||
        !bson_iter_recurse(&it, &entry))
        return;
    while (bson_iter_next(&entry)) {
        uint32_t len = 0;
        const uint8_t* data = nullptr;
        if (!BSON_ITER_HOLDS_DOCUMENT(&entry))
            continue;
        bson_iter_document(&entry, &len, &data);
        bson_t doc;
        if (bson_init_static(&doc, data, len))
            each(internal::intField(&doc, "index", -1), &doc);
    }
}

} // namespace

MongoLedger::Found MongoLedger::findLogged(std::span<const Charge> charges,
                                           std::unordered_set<std::string>& logged) {
    Coll c(pool_, db_, "request_logs");
    Doc filter, opts;
    bson_t cond, ids, proj;
    BSON_APPEND_DOCUMENT_BEGIN(filter.get(), "requestId", &cond);
    BSON_APPEND_ARRAY_BEGIN(&cond, "$in", &ids);
    for (std::size_t i = 0; i < charges.size(); ++i)
        BSON_APPEND_UTF8(&ids, std::to_string(i).c_str(), charges[i].requestId.c_str());
    bson_append_array_end(&cond, &ids);
    bson_append_document_end(filter.get(), &cond);
    BSON_APPEND_DOCUMENT_BEGIN(opts.get(), "projection", &proj);
    BSON_APPEND_INT32(&proj, "requestId", 1);
    bson_append_document_end(opts.get(), &proj);
    mongoc_cursor_t* cur =
        mongoc_collection_find_with_opts(c.get(), filter.get(), opts.get(), nullptr);
    const bson_t* d = nullptr;
    while (mongoc_cursor_next(cur, &d))
        logged.insert(internal::stringField(d, "requestId"));
    bson_error_t err;
    bool failed = mongoc_cursor_error(cur, &err);
    mongoc_cursor_destroy(cur);
    return failed ? Found::Error : Found::Yes;
}

MongoLedger::Found
MongoLedger::findUsers(const std::map<std::string, std::vector<BatchItem*>>& byUser,
                       std::map<std::string, Doc>& docs) {
    if (byUser.size() < 2)
        return Found::No; // casUser reads the one user itself
    Coll c(pool_, db_, "usersNew");
    Doc filter;
    bson_t cond, ids;
    BSON_APPEND_DOCUMENT_BEGIN(filter.get(), "_id", &cond);
    BSON_APPEND_ARRAY_BEGIN(&cond, "$in", &ids);
    std::size_t i = 0;
    for (const auto& entry : byUser)
        internal::appendUserId(&ids, std::to_string(i++).c_str(), entry.first);
    bson_append_array_end(&cond, &ids);
    bson_append_document_end(filter.get(), &cond);
    mongoc_cursor_t* cur =
        mongoc_collection_find_with_opts(c.get(), filter.get(), nullptr, nullptr);
    const bson_t* d = nullptr;
    while (mongoc_cursor_next(cur, &d)) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, d, "_id"))
            bson_copy_to_excluding_noinit(d, docs[internal::userNameOf(&it)].get(), "", nullptr);
    }
    bson_error_t err;
    bool failed = mongoc_cursor_error(cur, &err);
    mongoc_cursor_destroy(cur);
    return failed ? Found::Error : Found::Yes;
}

std::vector<MongoLedger::Write> MongoLedger::writeLogs(const std::vector<BatchItem*>& items) {
    ensureIndexes();
    Coll c(pool_, db_, "request_logs");
    Doc reply;
    bson_destroy(reply.get());
    bson_error_t err;
    // Upserts keyed by requestId, as writeLog(): an entry written before (a racing
    // settle, the sweep) is left as it is, with or without the unique index.
    bool ok = runBulk(c.get(), reply.get(), &err, [&](mongoc_bulk_operation_t* bulk) {
        Doc upsert;
        BSON_APPEND_BOOL(upsert.get(), "upsert", true);
        for (const BatchItem* it : items) {
            const bson_t* e = it->record.get();
            Doc filter, update;
            BSON_APPEND_UTF8(filter.get(), "requestId",
                             internal::stringField(e, "requestId").c_str());
            BSON_APPEND_DOCUMENT(update.get(), "$setOnInsert", e);
            if (!mongoc_bulk_operation_update_one_with_opts(bulk, filter.get(), update.get(),
                                                            upsert.get(), &err))
                return false;
        }
        return true;
    });
    const std::int64_t n = static_cast<std::int64_t>(items.size());
    std::vector<Write> out(items.size(), Write::Existed);
    std::int64_t accounted =
        internal::intField(reply.get(), "nMatched") + internal::intField(reply.get(), "nUpserted");
    eachIndexed(reply.get(), "upserted", [&](std::int64_t i, const bson_t*) {
        if (i >= 0 && i < n)
            out[i] = Write::Inserted;
    });
    eachIndexed(reply.get(), "writeErrors", [&](std::int64_t i, const bson_t* e) {
        bool dup = internal::intField(e, "code") == 11000; // lost a race to the same insert
        accounted += dup;
        if (i >= 0 && i < n)
            out[i] = dup ? Write::Existed : Write::Failed;
    });
    // Unless every statement is accounted for (only duplicate-key errors), one that was
    // neither upserted nor refused as a duplicate may not have run: say so.
    bson_iter_t wce;
    if (!ok && (accounted != n || bson_iter_init_find(&wce, reply.get(), "writeConcernErrors"))) {
        for (Write& w : out) {
            if (w == Write::Existed)
                w = Write::Failed;
        }
    }
    return out;
}

void MongoLedger::unsetPendingMany(const std::map<std::string, std::vector<std::string>>& byUser) {
    Coll c(pool_, db_, "usersNew");
    Doc reply;
    bson_destroy(reply.get());
    bson_error_t err;
    runBulk(c.get(), reply.get(), &err, [&](mongoc_bulk_operation_t* bulk) {
        for (const auto& [user, ids] : byUser) {
            Doc filter, update;
            internal::appendUserId(filter.get(), "_id", user);
            bson_t u;
            BSON_APPEND_DOCUMENT_BEGIN(update.get(), "$unset", &u);
            for (const std::string& id : ids)
                BSON_APPEND_UTF8(&u, ("trollproxyPending." + fieldSafe(id)).c_str(), "");
            bson_append_document_end(update.get(), &u);
            if (!mongoc_bulk_operation_update_one_with_opts(bulk, filter.get(), update.get(),
                                                            nullptr, &err))
                return false;
        }
        return true;
    }); // a marker left behind is finished (as a no-op) by a retry or the sweep
}

void MongoLedger::countKeyUse(const std::vector<const Charge*>& settled) {
    std::map<std::string, KeyUse> byKey;
    for (const Charge* ch : settled)
        byKey[ch->keyId].add(*ch); // in settlement order
    Coll c(pool_, db_, "user_keys");
    Doc reply;
    bson_destroy(reply.get());
    bson_error_t err;
    runBulk(c.get(), reply.get(), &err, [&](mongoc_bulk_operation_t* bulk) {
        for (const auto& [key, use] : byKey) {
            Doc filter, update;
            bson_t inc, set;
            BSON_APPEND_UTF8(filter.get(), "_id", key.c_str());
            BSON_APPEND_DOCUMENT_BEGIN(update.get(), "$inc", &inc);
            BSON_APPEND_INT64(&inc, "tokensUsed", use.tokens);
            BSON_APPEND_INT64(&inc, "requestsCount", use.requests);
            bson_append_document_end(update.get(), &inc);
            BSON_APPEND_DOCUMENT_BEGIN(update.get(), "$set", &set);
            BSON_APPEND_DATE_TIME(&set, "lastUsedAt", use.lastUsedAt);
            bson_append_document_end(update.get(), &set);
            if (!mongoc_bulk_operation_update_one_with_opts(bulk, filter.get(), update.get(),
                                                            nullptr, &err))
                return false;
        }
        return true;
    }); // statistics only
}

} // namespace trollproxy::internal::mongo
