// settleBatch()'s round trips besides the users' compare-and-sets: which ids are logged
// already (one find), the log entries (one bulk of inserts), the markers and the keys'
// statistics (one bulk each); and the writing of one log entry.
#include <algorithm>

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

// The entry as inserted: its `_id` (internal::logEntryId), then its fields.
void entryWithId(const bson_t* entry, bson_t* out) {
    bson_oid_t oid;
    internal::logEntryId(internal::stringField(entry, "requestId"), &oid);
    BSON_APPEND_OID(out, "_id", &oid);
    bson_concat(out, entry);
}

// Up to how far apart (in the ids' own time) ids of one process are looked up as
// one range: it returns that process's entries of the span, the batch's and others.
constexpr std::uint64_t kRangeSpanMs = 250;

// findLogged()'s filter: ids of trollproxy's format with one prefix that lie within
// kRangeSpanMs of each other as one range of requestId (the ids sort by time), the
// rest in one $in. A server answers the range with one index scan and CongoDB with
// one cheap comparison per document, where $in costs it one per document and id.
void appendLoggedFilter(std::span<const Charge> charges, bson_t* filter) {
    struct Id {
        std::string_view prefix, id;
        std::uint64_t ms;
    };
    std::vector<Id> timed;
    std::vector<std::string_view> rest;
    for (const Charge& ch : charges) {
        std::string_view id = ch.requestId;
        if (std::optional<std::uint64_t> ms = internal::requestIdTimeMs(id))
            timed.push_back({id.substr(0, id.size() - 24), id, *ms});
        else
            rest.push_back(id);
    }
    std::sort(timed.begin(), timed.end(), [](const Id& a, const Id& b) { return a.id < b.id; });
    std::vector<std::pair<std::string_view, std::string_view>> ranges;
    for (std::size_t i = 0; i < timed.size();) {
        std::size_t j = i + 1;
        while (j < timed.size() && timed[j].prefix == timed[i].prefix &&
               timed[j].ms - timed[i].ms <= kRangeSpanMs)
            ++j;
        if (j - i == 1)
            rest.push_back(timed[i].id);
        else
            ranges.emplace_back(timed[i].id, timed[j - 1].id);
        i = j;
    }
    auto appendUtf8 = [](bson_t* doc, const char* key, std::string_view v) {
        bson_append_utf8(doc, key, -1, v.data(), static_cast<int>(v.size()));
    };
    // One condition on requestId: a range, or the $in of the rest. Each says
    // `$type: "string"`, the partial index's filter, without which a server does
    // not use that index (mongo_doc.hpp, appendIndexedString).
    auto appendCondition = [&](bson_t* doc, std::size_t n) {
        bson_t cond;
        BSON_APPEND_DOCUMENT_BEGIN(doc, "requestId", &cond);
        BSON_APPEND_UTF8(&cond, "$type", "string");
        if (n < ranges.size()) {
            appendUtf8(&cond, "$gte", ranges[n].first);
            appendUtf8(&cond, "$lte", ranges[n].second);
        } else {
            bson_t ids;
            BSON_APPEND_ARRAY_BEGIN(&cond, "$in", &ids);
            for (std::size_t i = 0; i < rest.size(); ++i)
                appendUtf8(&ids, std::to_string(i).c_str(), rest[i]);
            bson_append_array_end(&cond, &ids);
        }
        bson_append_document_end(doc, &cond);
    };
    const std::size_t branches = ranges.size() + (rest.empty() ? 0 : 1);
    if (branches == 1) {
        appendCondition(filter, 0);
        return;
    }
    bson_t any;
    BSON_APPEND_ARRAY_BEGIN(filter, "$or", &any);
    for (std::size_t n = 0; n < branches; ++n) {
        bson_t branch;
        BSON_APPEND_DOCUMENT_BEGIN(&any, std::to_string(n).c_str(), &branch);
        appendCondition(&branch, n);
        bson_append_document_end(&any, &branch);
    }
    bson_append_array_end(filter, &any);
}

} // namespace

MongoLedger::Found MongoLedger::findLogged(std::span<const Charge> charges,
                                           std::unordered_set<std::string>& logged) {
    Coll c(pool_, db_, "request_logs");
    Doc filter, opts;
    bson_t proj;
    appendLoggedFilter(charges, filter.get());
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

MongoLedger::Write MongoLedger::upsertLog(const bson_t* entry) {
    Doc filter, update;
    if (!bson_has_field(entry, "requestId"))
        return Write::Failed;
    internal::appendIndexedString(filter.get(), "requestId",
                                  internal::stringField(entry, "requestId"));
    BSON_APPEND_DOCUMENT(update.get(), "$setOnInsert", entry);
    Coll c(pool_, db_, "request_logs");
    Doc opts, reply;
    BSON_APPEND_BOOL(opts.get(), "upsert", true);
    bson_destroy(reply.get());
    bson_error_t err;
    if (!mongoc_collection_update_one(c.get(), filter.get(), update.get(), opts.get(), reply.get(),
                                      &err))
        return err.code == 11000 ? Write::Existed : Write::Failed; // lost a race to the same insert
    return internal::intField(reply.get(), "upsertedCount") > 0 ? Write::Inserted : Write::Existed;
}

MongoLedger::Write MongoLedger::resolveDuplicate(const bson_t* entry) {
    const std::string id = internal::stringField(entry, "requestId");
    Doc filter, stored;
    bson_oid_t oid;
    internal::logEntryId(id, &oid);
    BSON_APPEND_OID(filter.get(), "_id", &oid);
    switch (findOne("request_logs", filter.get(), stored)) {
    case Found::Error:
        return Write::Failed;
    case Found::Yes:
        if (internal::stringField(stored.get(), "requestId") == id)
            return Write::Existed;
        break; // another request's entry has this _id
    case Found::No:
        break; // refused by the requestId index: an entry written under another _id
    }
    return upsertLog(entry);
}

MongoLedger::Write MongoLedger::writeLog(const bson_t* entry) {
    ensureIndexes();
    if (!bson_has_field(entry, "requestId"))
        return Write::Failed;
    Doc doc, reply;
    entryWithId(entry, doc.get());
    Coll c(pool_, db_, "request_logs");
    bson_destroy(reply.get());
    bson_error_t err;
    if (mongoc_collection_insert_one(c.get(), doc.get(), nullptr, reply.get(), &err))
        return Write::Inserted;
    return err.code == 11000 ? resolveDuplicate(entry) : Write::Failed;
}

std::vector<MongoLedger::Write> MongoLedger::writeLogs(const std::vector<BatchItem*>& items) {
    ensureIndexes();
    Coll c(pool_, db_, "request_logs");
    Doc reply;
    bson_destroy(reply.get());
    bson_error_t err;
    // Plain inserts under each entry's own _id (writeLog()): an upsert keyed by requestId
    // costs a lookup of its own (on CongoDB, a scan of the whole collection).
    bool ok = runBulk(c.get(), reply.get(), &err, [&](mongoc_bulk_operation_t* bulk) {
        for (const BatchItem* it : items) {
            Doc doc;
            entryWithId(it->record.get(), doc.get());
            if (!mongoc_bulk_operation_insert_with_opts(bulk, doc.get(), nullptr, &err))
                return false;
        }
        return true;
    });
    const std::int64_t n = static_cast<std::int64_t>(items.size());
    std::vector<Write> out(items.size(), Write::Inserted);
    std::int64_t accounted = internal::intField(reply.get(), "nInserted");
    std::vector<std::size_t> duplicates;
    eachIndexed(reply.get(), "writeErrors", [&](std::int64_t i, const bson_t* e) {
        ++accounted;
        if (i < 0 || i >= n)
            return;
        bool dup = internal::intField(e, "code") == 11000;
        out[i] = dup ? Write::Existed : Write::Failed;
        if (dup)
            duplicates.push_back(static_cast<std::size_t>(i));
    });
    // Unless every statement is accounted for, the reply does not say which entries
    // went in: none counts as written, and a retry finds the ones that did.
    bson_iter_t wce;
    if (!ok && (accounted != n || bson_iter_init_find(&wce, reply.get(), "writeConcernErrors"))) {
        std::fill(out.begin(), out.end(), Write::Failed);
        return out;
    }
    for (std::size_t i : duplicates)
        out[i] = resolveDuplicate(items[i]->record.get());
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
