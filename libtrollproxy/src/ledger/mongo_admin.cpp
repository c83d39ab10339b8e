// MongoLedger administration: users, keys, credits, balances, usage.
#include <mongoc/mongoc.h>

#include "ledger/mongo_ledger_impl.hpp"

namespace trollproxy::internal::mongo {

Result<void> MongoLedger::addUser(std::string_view name) {
    if (name.empty())
        return Error{ErrorCode::InvalidArgument, "a user name must not be empty"};
    Coll c(pool_, db_, "usersNew");
    Doc doc;
    internal::appendUserId(doc.get(), "_id", std::string(name));
    BSON_APPEND_BOOL(doc.get(), "isActive", true);
    BSON_APPEND_UTF8(doc.get(), "role", "user");
    BSON_APPEND_BOOL(doc.get(), "migration", true);
    for (const char* f : {"credits", "creditsUsed", "refCredits", "creditsNew", "creditsNewUsed"})
        BSON_APPEND_DOUBLE(doc.get(), f, 0.0);
    for (const char* f : {"tokensUserNew", "totalInputTokens", "totalOutputTokens"})
        BSON_APPEND_INT64(doc.get(), f, 0);
    BSON_APPEND_DATE_TIME(doc.get(), "createdAt", nowMs());
    bson_error_t err;
    if (!mongoc_collection_insert_one(c.get(), doc.get(), nullptr, nullptr, &err)) {
        if (err.code == 11000)
            return Error{ErrorCode::Conflict, "user " + std::string(name) + " already exists"};
        return Error{ErrorCode::Unavailable, std::string("MongoDB: ") + err.message};
    }
    return {};
}

Result<std::string> MongoLedger::addKey(std::string_view name) {
    std::string user(name);
    Doc doc;
    Found f = findUser(user, doc);
    if (f == Found::Error)
        return Error{ErrorCode::Unavailable, "MongoDB is unavailable"};
    if (f == Found::No)
        return Error{ErrorCode::NotFound, "no user " + user};
    std::string key = newApiKey();
    if (internal::stringField(doc.get(), "apiKey").empty()) {
        // The first key is the user's own apiKey, as production has it.
        Doc filter, update;
        internal::appendUserId(filter.get(), "_id", user);
        bson_t set;
        BSON_APPEND_DOCUMENT_BEGIN(update.get(), "$set", &set);
        BSON_APPEND_UTF8(&set, "apiKey", key.c_str());
        bson_append_document_end(update.get(), &set);
        if (updateOne("usersNew", filter.get(), update.get()) <= 0)
            return Error{ErrorCode::Unavailable, "MongoDB is unavailable"};
        return key;
    }
    Coll c(pool_, db_, "user_keys");
    Doc k;
    BSON_APPEND_UTF8(k.get(), "_id", key.c_str());
    BSON_APPEND_UTF8(k.get(), "name", user.c_str());
    BSON_APPEND_BOOL(k.get(), "isActive", true);
    BSON_APPEND_INT64(k.get(), "tokensUsed", 0);
    BSON_APPEND_INT64(k.get(), "requestsCount", 0);
    BSON_APPEND_DATE_TIME(k.get(), "createdAt", nowMs());
    bson_error_t err;
    if (!mongoc_collection_insert_one(c.get(), k.get(), nullptr, nullptr, &err))
        return Error{ErrorCode::Unavailable, std::string("MongoDB: ") + err.message};
    return key;
}

Result<void> MongoLedger::revokeKey(std::string_view apiKey) {
    std::string key(apiKey);
    Doc kf, ku;
    BSON_APPEND_UTF8(kf.get(), "_id", key.c_str());
    bson_t set, unset, add;
    BSON_APPEND_DOCUMENT_BEGIN(ku.get(), "$set", &set);
    BSON_APPEND_BOOL(&set, "isActive", false);
    bson_append_document_end(ku.get(), &set);
    int n = updateOne("user_keys", kf.get(), ku.get());
    if (n < 0)
        return Error{ErrorCode::Unavailable, "MongoDB is unavailable"};
    if (n > 0)
        return {};
    // A user's own apiKey: take it off the user, and remember it as revoked.
    Doc uf, uu;
    BSON_APPEND_UTF8(uf.get(), "apiKey", key.c_str());
    BSON_APPEND_DOCUMENT_BEGIN(uu.get(), "$unset", &unset);
    BSON_APPEND_UTF8(&unset, "apiKey", "");
    bson_append_document_end(uu.get(), &unset);
    BSON_APPEND_DOCUMENT_BEGIN(uu.get(), "$addToSet", &add);
    BSON_APPEND_UTF8(&add, "trollproxyRevokedKeys", key.c_str());
    bson_append_document_end(uu.get(), &add);
    n = updateOne("usersNew", uf.get(), uu.get());
    if (n < 0)
        return Error{ErrorCode::Unavailable, "MongoDB is unavailable"};
    if (n == 0)
        return Error{ErrorCode::NotFound, "no such key"};
    return {};
}

Result<void> MongoLedger::credit(std::string_view name, BalanceField field, Money amount) {
    int index = field == BalanceField::Credits      ? 0
                : field == BalanceField::RefCredits ? 1
                                                    : 2; // kBalanceFields
    if (amount.nanos < 0)
        return Error{ErrorCode::InvalidArgument, "the amount must not be negative"};
    Cas r = casUser(std::string(name), [&](const bson_t* user, bson_t*, bson_t* update) {
        PoolFields bal = readBalance(user), after = bal;
        std::int64_t* f[3] = {&after.credits, &after.refCredits, &after.creditsNew};
        *f[index] += amount.nanos;
        bson_t set;
        BSON_APPEND_DOCUMENT_BEGIN(update, "$set", &set);
        setChangedBalances(&set, bal, after);
        bson_append_document_end(update, &set);
        return true;
    });
    if (r == Cas::NotFound)
        return Error{ErrorCode::NotFound, "no user " + std::string(name)};
    if (r != Cas::Applied)
        return Error{ErrorCode::Unavailable, "MongoDB is unavailable"};
    return {};
}

namespace {

// What the user's outstanding holds took from each balance field.
PoolFields heldTotal(const bson_t* user) {
    PoolFields sum;
    bson_iter_t sub, entry;
    if (!bson_iter_init_find(&sub, user, "trollproxyHolds") || !BSON_ITER_HOLDS_DOCUMENT(&sub) ||
        !bson_iter_recurse(&sub, &entry))
        return sum;
    while (bson_iter_next(&entry)) {
        bson_iter_t field;
        if (!BSON_ITER_HOLDS_DOCUMENT(&entry) || !bson_iter_recurse(&entry, &field))
            continue;
        while (bson_iter_next(&field)) {
            std::string_view k = bson_iter_key(&field);
            std::int64_t* to = k == "credits"      ? &sum.credits
                               : k == "refCredits" ? &sum.refCredits
                               : k == "creditsNew" ? &sum.creditsNew
                                                   : nullptr;
            if (to && BSON_ITER_HOLDS_NUMBER(&field))
                *to += bson_iter_as_int64(&field);
        }
    }
    return sum;
}

} // namespace

Result<Balance> MongoLedger::balance(std::string_view name) {
    Doc doc;
    Found f = findUser(std::string(name), doc);
    if (f == Found::Error)
        return Error{ErrorCode::Unavailable, "MongoDB is unavailable"};
    if (f == Found::No)
        return Error{ErrorCode::NotFound, "no user " + std::string(name)};
    auto m = [&](const char* k) { return internal::moneyField(doc.get(), k).value_or(Money{}); };
    PoolFields held = heldTotal(doc.get());
    return Balance{m("credits"),
                   m("creditsUsed"),
                   m("refCredits"),
                   m("creditsNew"),
                   m("creditsNewUsed"),
                   internal::intField(doc.get(), "tokensUserNew"),
                   internal::intField(doc.get(), "totalInputTokens"),
                   internal::intField(doc.get(), "totalOutputTokens"),
                   Money{held.credits},
                   Money{held.refCredits},
                   Money{held.creditsNew}};
}

Result<std::vector<LogEntry>> MongoLedger::usage(std::string_view name, std::int64_t last) {
    Coll c(pool_, db_, "request_logs");
    Doc filter, opts;
    BSON_APPEND_UTF8(filter.get(), "userId", std::string(name).c_str());
    bson_t sort;
    BSON_APPEND_DOCUMENT_BEGIN(opts.get(), "sort", &sort);
    BSON_APPEND_INT32(&sort, "createdAt", -1);
    bson_append_document_end(opts.get(), &sort);
    BSON_APPEND_INT64(opts.get(), "limit", last);
    mongoc_cursor_t* cur =
        mongoc_collection_find_with_opts(c.get(), filter.get(), opts.get(), nullptr);
    std::vector<LogEntry> out;
    const bson_t* d = nullptr;
    while (mongoc_cursor_next(cur, &d))
        out.push_back(internal::logEntryFrom(d));
    bson_error_t err;
    bool failed = mongoc_cursor_error(cur, &err);
    mongoc_cursor_destroy(cur);
    if (failed)
        return Error{ErrorCode::Unavailable, std::string("MongoDB: ") + err.message};
    return out;
}

Result<Money> MongoLedger::totalShortfall() {
    // The log entries are the record; summing them keeps the total exact.
    Coll c(pool_, db_, "request_logs");
    Doc filter, opts;
    bson_t cond;
    BSON_APPEND_DOCUMENT_BEGIN(filter.get(), "shortfallNanos", &cond);
    BSON_APPEND_INT64(&cond, "$gt", 0);
    bson_append_document_end(filter.get(), &cond);
    mongoc_cursor_t* cur =
        mongoc_collection_find_with_opts(c.get(), filter.get(), nullptr, nullptr);
    Money total;
    const bson_t* d = nullptr;
    while (mongoc_cursor_next(cur, &d))
        total += Money{internal::intField(d, "shortfallNanos")};
    bson_error_t err;
    bool failed = mongoc_cursor_error(cur, &err);
    mongoc_cursor_destroy(cur);
    if (failed)
        return Error{ErrorCode::Unavailable, std::string("MongoDB: ") + err.message};
    return total;
}

} // namespace trollproxy::internal::mongo
