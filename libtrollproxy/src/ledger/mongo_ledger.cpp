// MongoLedger: every money change is one single-document compare-and-set update on the
// user's usersNew document, computed in exact nano-dollars by the shared pool arithmetic,
// so it needs no transactions and works the same on a replica set or a sharded cluster.
// Holds and in-flight settlements live in fields trollproxy owns (trollproxyHolds,
// trollproxyPending); other fields are only ever changed by $set/$inc on that field.
#include "ledger/mongo_ledger.hpp"

#include <cstdio>
#include <cstdlib>

#include "ledger/mongo_ledger_impl.hpp"

namespace trollproxy::internal::mongo {

std::int64_t nowMs() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string fieldSafe(std::string_view id) {
    std::string s(id);
    for (char& c : s) {
        if (c == '.' || c == '$')
            c = '_';
    }
    return s;
}

PoolFields readBalance(const bson_t* user) {
    auto get = [&](const char* f) { return internal::moneyField(user, f).value_or(Money{}).nanos; };
    return {get("credits"), get("refCredits"), get("creditsNew")};
}

void setChangedBalances(bson_t* set, const PoolFields& before, const PoolFields& after) {
    std::int64_t b[3] = {before.credits, before.refCredits, before.creditsNew};
    std::int64_t a[3] = {after.credits, after.refCredits, after.creditsNew};
    for (int i = 0; i < 3; ++i) {
        if (a[i] != b[i])
            BSON_APPEND_DOUBLE(set, kBalanceFields[i], Money{a[i]}.toUsdDouble());
    }
}

AuthOutcome MongoLedger::authenticate(std::string_view apiKey) {
    std::string key(apiKey);
    Doc user;
    Account acct;
    acct.keyId = key;
    Doc byKey;
    BSON_APPEND_UTF8(byKey.get(), "apiKey", key.c_str());
    Found f = findOne("usersNew", byKey.get(), user);
    if (f == Found::Error)
        return {AuthStatus::LedgerUnavailable, {}};
    std::int64_t now = nowMs();
    if (f == Found::No) {
        Doc keyDoc, filter;
        BSON_APPEND_UTF8(filter.get(), "_id", key.c_str());
        Found k = findOne("user_keys", filter.get(), keyDoc);
        if (k == Found::Error)
            return {AuthStatus::LedgerUnavailable, {}};
        if (k == Found::No) {
            Doc revoked, r;
            BSON_APPEND_UTF8(revoked.get(), "trollproxyRevokedKeys", key.c_str());
            Found rf = findOne("usersNew", revoked.get(), r);
            if (rf == Found::Error)
                return {AuthStatus::LedgerUnavailable, {}};
            return {rf == Found::Yes ? AuthStatus::KeyRevoked : AuthStatus::KeyInvalid, {}};
        }
        if (!internal::boolField(keyDoc.get(), "isActive").value_or(true))
            return {AuthStatus::KeyRevoked, {}};
        if (auto exp = internal::timeField(keyDoc.get(), "expiresAt"); exp && *exp < now)
            return {AuthStatus::KeyExpired, {}};
        Found u = findUser(internal::stringField(keyDoc.get(), "name"), user);
        if (u == Found::Error)
            return {AuthStatus::LedgerUnavailable, {}};
        if (u == Found::No)
            return {AuthStatus::KeyInvalid, {}};
    }
    bson_iter_t it;
    if (bson_iter_init_find(&it, user.get(), "_id"))
        acct.userId = internal::userNameOf(&it);
    acct.admin = internal::stringField(user.get(), "role") == "admin";
    if (!internal::boolField(user.get(), "isActive").value_or(true))
        return {AuthStatus::KeyRevoked, {}};
    if (auto exp = internal::timeField(user.get(), "expiresAt"); exp && *exp < now)
        return {AuthStatus::KeyExpired, {}};
    if (!acct.admin && !internal::boolField(user.get(), "migration").value_or(true))
        return {AuthStatus::MigrationRequired, {}};
    return {AuthStatus::Authorized, acct};
}

ReserveStatus MongoLedger::reserve(const HoldRequest& h) {
    std::string holdKey = "trollproxyHolds." + fieldSafe(h.requestId);
    bool already = false;
    Cas r = casUser(h.userId, [&](const bson_t* user, bson_t* filter, bson_t* update) {
        bson_iter_t it;
        if (bson_iter_init(&it, user) && bson_iter_find_descendant(&it, holdKey.c_str(), &it)) {
            already = true; // the same hold again
            return true;
        }
        PoolFields bal = readBalance(user), take;
        if (!internal::takeHold(h.pool, h.amount.nanos, bal, take))
            return false;
        PoolFields after{bal.credits - take.credits, bal.refCredits - take.refCredits,
                         bal.creditsNew - take.creditsNew};
        bson_t set, hold, cond;
        BSON_APPEND_DOCUMENT_BEGIN(update, "$set", &set);
        setChangedBalances(&set, bal, after);
        bson_append_document_begin(&set, holdKey.c_str(), -1, &hold);
        BSON_APPEND_UTF8(&hold, "pool", poolName(h.pool));
        BSON_APPEND_INT64(&hold, "credits", take.credits);
        BSON_APPEND_INT64(&hold, "refCredits", take.refCredits);
        BSON_APPEND_INT64(&hold, "creditsNew", take.creditsNew);
        BSON_APPEND_INT64(&hold, "expiresAt", h.expiresAtMs);
        // The key is fieldSafe(id); releaseHolds() matches prefixes on the id itself.
        BSON_APPEND_UTF8(&hold, "requestId", h.requestId.c_str());
        bson_append_document_end(&set, &hold);
        bson_append_document_end(update, &set);
        bson_append_document_begin(filter, holdKey.c_str(), -1, &cond);
        BSON_APPEND_BOOL(&cond, "$exists", false);
        bson_append_document_end(filter, &cond);
        return true;
    });
    switch (r) {
    case Cas::Applied:
        if (!already) {
            std::lock_guard lock(ownersMutex_);
            holdOwner_[h.requestId] = h.userId;
        }
        return ReserveStatus::Reserved;
    case Cas::Refused:
    case Cas::NotFound:
        return ReserveStatus::InsufficientCredits;
    case Cas::Unavailable:
        break;
    }
    return ReserveStatus::LedgerUnavailable;
}

void MongoLedger::ensureIndexes() {
    if (indexed_.load())
        return;
    // settle() looks log entries up by requestId on every request; unique, the
    // index also refuses an entry for an id written under another _id (by an
    // older trollproxy, or when two ids share one: mongo_batch_write.cpp).
    // Partial, so production entries without a requestId are not affected.
    Coll c(pool_, db_, "request_logs");
    Doc cmd, reply;
    bson_t indexes, index, key, partial, cond;
    BSON_APPEND_UTF8(cmd.get(), "createIndexes", "request_logs");
    BSON_APPEND_ARRAY_BEGIN(cmd.get(), "indexes", &indexes);
    BSON_APPEND_DOCUMENT_BEGIN(&indexes, "0", &index);
    BSON_APPEND_DOCUMENT_BEGIN(&index, "key", &key);
    BSON_APPEND_INT32(&key, "requestId", 1);
    bson_append_document_end(&index, &key);
    BSON_APPEND_UTF8(&index, "name", "trollproxy_requestId");
    BSON_APPEND_BOOL(&index, "unique", true);
    BSON_APPEND_DOCUMENT_BEGIN(&index, "partialFilterExpression", &partial);
    BSON_APPEND_DOCUMENT_BEGIN(&partial, "requestId", &cond);
    BSON_APPEND_UTF8(&cond, "$type", "string");
    bson_append_document_end(&partial, &cond);
    bson_append_document_end(&index, &partial);
    bson_append_document_end(&indexes, &index);
    // Responses API: responseOwner() looks entries up by the response's id.
    bson_t rindex, rkey, rpartial, rcond;
    BSON_APPEND_DOCUMENT_BEGIN(&indexes, "1", &rindex);
    BSON_APPEND_DOCUMENT_BEGIN(&rindex, "key", &rkey);
    BSON_APPEND_INT32(&rkey, "responseId", 1);
    bson_append_document_end(&rindex, &rkey);
    BSON_APPEND_UTF8(&rindex, "name", "trollproxy_responseId");
    BSON_APPEND_DOCUMENT_BEGIN(&rindex, "partialFilterExpression", &rpartial);
    BSON_APPEND_DOCUMENT_BEGIN(&rpartial, "responseId", &rcond);
    BSON_APPEND_UTF8(&rcond, "$type", "string");
    bson_append_document_end(&rpartial, &rcond);
    bson_append_document_end(&rindex, &rpartial);
    bson_append_document_end(&indexes, &rindex);
    bson_append_array_end(cmd.get(), &indexes);
    bson_destroy(reply.get());
    bson_error_t err;
    bool ok =
        mongoc_collection_write_command_with_opts(c.get(), cmd.get(), nullptr, reply.get(), &err);
    // Only a network error is worth another try; a refusal (no permission, an
    // existing index with other options) is not going to change.
    if (ok || err.domain == MONGOC_ERROR_SERVER || err.domain == MONGOC_ERROR_WRITE_CONCERN)
        indexed_.store(true);
}

void MongoLedger::unsetPending(const std::string& user, const std::string& id) {
    Doc filter, update;
    internal::appendUserId(filter.get(), "_id", user);
    bson_t u;
    BSON_APPEND_DOCUMENT_BEGIN(update.get(), "$unset", &u);
    BSON_APPEND_UTF8(&u, ("trollproxyPending." + fieldSafe(id)).c_str(), "");
    bson_append_document_end(update.get(), &u);
    updateOne("usersNew", filter.get(), update.get());
}

bool hasField(const bson_t* doc, const std::string& path) {
    bson_iter_t it, found;
    return bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path.c_str(), &found);
}

PoolFields heldBy(const bson_t* user, const std::string& holdKey) {
    return {internal::intField(user, (holdKey + ".credits").c_str()),
            internal::intField(user, (holdKey + ".refCredits").c_str()),
            internal::intField(user, (holdKey + ".creditsNew").c_str())};
}

void appendExists(bson_t* filter, const std::string& path, bool exists) {
    bson_t cond;
    bson_append_document_begin(filter, path.c_str(), -1, &cond);
    BSON_APPEND_BOOL(&cond, "$exists", exists);
    bson_append_document_end(filter, &cond);
}

void appendSameHeld(bson_t* filter, const bson_t* user, const std::string& holdKey) {
    for (const char* field : kBalanceFields) {
        std::string path = holdKey + "." + field;
        internal::appendSameAs(filter, path.c_str(), user, path.c_str());
    }
}

namespace {

// The update that gives the hold at holdKey back to the fields it came from.
void appendGiveBack(const bson_t* user, const std::string& holdKey, bson_t* filter,
                    bson_t* update) {
    PoolFields bal = readBalance(user), held = heldBy(user, holdKey);
    PoolFields after{bal.credits + held.credits, bal.refCredits + held.refCredits,
                     bal.creditsNew + held.creditsNew};
    Doc set;
    setChangedBalances(set.get(), bal, after);
    if (!bson_empty(set.get())) // a slice drawn to zero gives nothing back
        BSON_APPEND_DOCUMENT(update, "$set", set.get());
    bson_t unset;
    BSON_APPEND_DOCUMENT_BEGIN(update, "$unset", &unset);
    BSON_APPEND_UTF8(&unset, holdKey.c_str(), "");
    bson_append_document_end(update, &unset);
    // A slice's amounts change without the balances: guard them too.
    appendExists(filter, holdKey, true);
    appendSameHeld(filter, user, holdKey);
}

} // namespace

void copyMarker(const bson_iter_t* it, bson_t* record) {
    uint32_t len = 0;
    const uint8_t* data = nullptr;
    bson_iter_document(it, &len, &data);
    bson_t marker;
    bson_reinit(record);
    if (bson_init_static(&marker, data, len))
        bson_copy_to_excluding_noinit(&marker, record, "at", nullptr);
}

MongoLedger::Cas MongoLedger::releaseOn(const std::string& user, const std::string& id) {
    bool gaveBack = false;
    return releaseOn(user, id, gaveBack);
}

MongoLedger::Cas MongoLedger::releaseOn(const std::string& user, const std::string& id,
                                        bool& gaveBack) {
    std::string holdKey = "trollproxyHolds." + fieldSafe(id);
    return casUser(user, [&](const bson_t* doc, bson_t* filter, bson_t* update) {
        gaveBack = hasField(doc, holdKey); // as of the attempt that was applied
        if (gaveBack)
            appendGiveBack(doc, holdKey, filter, update);
        return true; // nothing held: settled or released before
    });
}

Result<void> MongoLedger::release(std::string_view requestId) {
    std::string id(requestId), user;
    {
        std::lock_guard lock(ownersMutex_);
        auto it = holdOwner_.find(id);
        if (it != holdOwner_.end())
            user = it->second;
    }
    if (user.empty()) {
        // Not ours (another process took it): find who holds it.
        Doc filter, doc, opts, proj;
        bson_t cond;
        bson_append_document_begin(filter.get(), ("trollproxyHolds." + fieldSafe(id)).c_str(), -1,
                                   &cond);
        BSON_APPEND_BOOL(&cond, "$exists", true);
        bson_append_document_end(filter.get(), &cond);
        Found f = findOne("usersNew", filter.get(), doc);
        if (f == Found::Error)
            return Error{ErrorCode::Unavailable, "MongoDB is unavailable"};
        if (f == Found::No)
            return {};
        bson_iter_t it;
        if (bson_iter_init_find(&it, doc.get(), "_id"))
            user = internal::userNameOf(&it);
    }
    Cas r = releaseOn(user, id);
    if (r == Cas::Unavailable)
        return Error{ErrorCode::Unavailable, "MongoDB is unavailable"};
    std::lock_guard lock(ownersMutex_);
    holdOwner_.erase(id);
    return {};
}

Result<void> MongoLedger::renewHold(std::string_view requestId, std::int64_t expiresAtMs) {
    std::string id(requestId), user;
    {
        std::lock_guard lock(ownersMutex_);
        if (auto it = holdOwner_.find(id); it != holdOwner_.end())
            user = it->second;
    }
    // Only the expiry changes, so no compare-and-set on the balances: the filter
    // requires the hold to exist, and the update touches nothing else.
    std::string holdKey = "trollproxyHolds." + fieldSafe(id);
    Doc filter, update;
    if (!user.empty())
        internal::appendUserId(filter.get(), "_id", user);
    appendExists(filter.get(), holdKey, true); // without the owner (another process's hold): a scan
    bson_t set;
    BSON_APPEND_DOCUMENT_BEGIN(update.get(), "$set", &set);
    BSON_APPEND_INT64(&set, (holdKey + ".expiresAt").c_str(), expiresAtMs);
    bson_append_document_end(update.get(), &set);
    int n = updateOne("usersNew", filter.get(), update.get());
    if (n < 0)
        return Error{ErrorCode::Unavailable, "MongoDB is unavailable"};
    if (n == 0)
        return Error{ErrorCode::NotFound, "request " + id + " holds nothing"};
    return {};
}

Result<std::string> MongoLedger::responseOwner(std::string_view responseId) {
    ensureIndexes();
    Doc filter, doc;
    internal::appendIndexedString(filter.get(), "responseId", responseId);
    switch (findOne("request_logs", filter.get(), doc)) {
    case Found::Yes:
        return internal::stringField(doc.get(), "userId");
    case Found::No:
        return Error{ErrorCode::NotFound, "no request created this response"};
    case Found::Error:
        break;
    }
    return Error{ErrorCode::Unavailable, "cannot read request_logs"};
}

Result<void> MongoLedger::recordRequest(const LogEntry& e) {
    Doc record;
    internal::appendLogEntry(record.get(), e, nullptr);
    if (writeLog(record.get()) == Write::Failed)
        return Error{ErrorCode::Unavailable, "cannot write the request log"};
    return {};
}

bool MongoLedger::ping() {
    Coll c(pool_, db_, "usersNew");
    Doc cmd, reply;
    BSON_APPEND_INT32(cmd.get(), "ping", 1);
    bson_destroy(reply.get());
    bson_error_t err;
    return mongoc_client_command_simple(c.client(), "admin", cmd.get(), nullptr, reply.get(), &err);
}

} // namespace trollproxy::internal::mongo

namespace trollproxy::internal {

using mongo::MongoLedger;

Result<std::unique_ptr<LedgerBackend>> openMongoLedger(std::string_view uriText,
                                                       const LedgerOptions& options) {
    static std::once_flag once;
    std::call_once(once, [] {
        mongoc_init();
        // The driver's own log: warnings and errors only, to stderr (no debug chatter).
        mongoc_log_trace_disable();
        mongoc_log_set_handler(
            [](mongoc_log_level_t level, const char* domain, const char* message, void*) {
                if (level <= MONGOC_LOG_LEVEL_WARNING)
                    std::fprintf(stderr, "mongoc %s: %s\n", domain, message);
            },
            nullptr);
    });
    bson_error_t err;
    mongoc_uri_t* uri = mongoc_uri_new_with_error(std::string(uriText).c_str(), &err);
    if (!uri)
        return Error{ErrorCode::InvalidArgument, std::string("MongoDB URI: ") + err.message};
    // Bound every wait so a down or slow server answers "unavailable", never hangs.
    auto timeout = static_cast<int32_t>(options.timeoutMs);
    for (const char* o : {MONGOC_URI_SERVERSELECTIONTIMEOUTMS, MONGOC_URI_CONNECTTIMEOUTMS,
                          MONGOC_URI_SOCKETTIMEOUTMS}) {
        if (!mongoc_uri_has_option(uri, o))
            mongoc_uri_set_option_as_int32(uri, o, timeout);
    }
    if (!options.writeConcern.empty()) {
        mongoc_write_concern_t* wc = mongoc_write_concern_new();
        if (options.writeConcern == "majority")
            mongoc_write_concern_set_wmajority(wc, static_cast<int32_t>(options.timeoutMs));
        else
            mongoc_write_concern_set_w(wc, std::atoi(options.writeConcern.c_str()));
        mongoc_uri_set_write_concern(uri, wc);
        mongoc_write_concern_destroy(wc);
    }
    std::string db;
    if (const char* d = mongoc_uri_get_database(uri); d && *d)
        db = d;
    else if (const char* e = std::getenv("MONGODB_DB_NAME"); e && *e)
        db = e;
    else
        db = "fproxy";
    mongoc_client_pool_t* pool = mongoc_client_pool_new(uri);
    mongoc_uri_destroy(uri);
    if (!pool)
        return Error{ErrorCode::InvalidArgument, "cannot create a MongoDB client pool"};
    mongoc_client_pool_set_error_api(pool, MONGOC_ERROR_API_VERSION_2);
    mongoc_client_pool_max_size(pool, 256);
    return std::unique_ptr<LedgerBackend>(new MongoLedger(pool, std::move(db)));
}

} // namespace trollproxy::internal
