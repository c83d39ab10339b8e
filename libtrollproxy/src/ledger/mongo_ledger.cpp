// MongoLedger: every money change is one single-document compare-and-set update on the
// user's usersNew document, computed in exact nano-dollars by the shared pool arithmetic,
// so it needs no transactions and works the same on a replica set or a sharded cluster.
// Holds and in-flight settlements live in fields trollproxy owns (trollproxyHolds,
// trollproxyPending); other fields are only ever changed by $set/$inc on that field.
#include "ledger/mongo_ledger.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include <mongoc/mongoc.h>

#include "ledger/mongo_doc.hpp"
#include "ledger/pool_math.hpp"

namespace trollproxy {

namespace {

using internal::Doc;
using internal::PoolFields;

std::int64_t nowMs() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

// Request ids become field names: keep them free of '.' and '$'.
std::string fieldSafe(std::string_view id) {
    std::string s(id);
    for (char& c : s) {
        if (c == '.' || c == '$')
            c = '_';
    }
    return s;
}

const char* kBalanceFields[3] = {"credits", "refCredits", "creditsNew"};

PoolFields readBalance(const bson_t* user) {
    auto get = [&](const char* f) { return internal::moneyField(user, f).value_or(Money{}).nanos; };
    return {get("credits"), get("refCredits"), get("creditsNew")};
}

// Appends $set entries for the balance fields that change.
void setChangedBalances(bson_t* set, const PoolFields& before, const PoolFields& after) {
    std::int64_t b[3] = {before.credits, before.refCredits, before.creditsNew};
    std::int64_t a[3] = {after.credits, after.refCredits, after.creditsNew};
    for (int i = 0; i < 3; ++i) {
        if (a[i] != b[i])
            BSON_APPEND_DOUBLE(set, kBalanceFields[i], Money{a[i]}.toUsdDouble());
    }
}

class MongoLedger final : public CreditLedger {
public:
    MongoLedger(mongoc_client_pool_t* pool, std::string db) : pool_(pool), db_(std::move(db)) {
        const char* fp = std::getenv("TROLLPROXY_TEST_FAILPOINT");
        crashAfterCharge_ = fp && std::string_view(fp) == "mongo-crash-after-charge";
    }
    ~MongoLedger() override { mongoc_client_pool_destroy(pool_); }

    AuthOutcome authenticate(std::string_view apiKey) override;
    ReserveStatus reserve(const HoldRequest& hold) override;
    SettleOutcome settle(const Charge& charge) override;
    Result<void> release(std::string_view requestId) override;
    Result<std::int64_t> sweepExpiredHolds(std::int64_t nowMs) override;
    Result<void> recordRequest(const LogEntry& entry) override;
    bool ping() override;
    Result<void> addUser(std::string_view name) override;
    Result<std::string> addKey(std::string_view name) override;
    Result<void> revokeKey(std::string_view apiKey) override;
    Result<void> credit(std::string_view name, std::string_view field, Money amount) override;
    Result<Balance> balance(std::string_view name) override;
    Result<std::vector<LogEntry>> usage(std::string_view name, std::int64_t last) override;
    Result<Money> totalShortfall() override;

private:
    // A client from the pool and one collection, returned on destruction.
    class Coll {
    public:
        Coll(mongoc_client_pool_t* pool, const std::string& db, const char* name)
            : pool_(pool), client_(mongoc_client_pool_pop(pool)),
              coll_(mongoc_client_get_collection(client_, db.c_str(), name)) {}
        ~Coll() {
            mongoc_collection_destroy(coll_);
            mongoc_client_pool_push(pool_, client_);
        }
        mongoc_collection_t* get() { return coll_; }
        mongoc_client_t* client() { return client_; }

    private:
        mongoc_client_pool_t* pool_;
        mongoc_client_t* client_;
        mongoc_collection_t* coll_;
    };

    enum class Found { Yes, No, Error };

    Found findOne(const char* collection, const bson_t* filter, Doc& out, const bson_t* opts = nullptr) {
        Coll c(pool_, db_, collection);
        Doc o;
        if (opts)
            bson_copy_to_excluding_noinit(opts, o.get(), "", nullptr);
        BSON_APPEND_INT64(o.get(), "limit", 1);
        mongoc_cursor_t* cur = mongoc_collection_find_with_opts(c.get(), filter, o.get(), nullptr);
        const bson_t* d = nullptr;
        Found r = Found::No;
        if (mongoc_cursor_next(cur, &d)) {
            bson_copy_to(d, out.get());
            r = Found::Yes;
        }
        bson_error_t err;
        if (mongoc_cursor_error(cur, &err))
            r = Found::Error;
        mongoc_cursor_destroy(cur);
        return r;
    }

    // updateOne; returns matched count, or -1 on error.
    int updateOne(const char* collection, const bson_t* filter, const bson_t* update, bool upsert = false,
                  bson_error_t* errOut = nullptr) {
        Coll c(pool_, db_, collection);
        Doc opts, reply;
        if (upsert)
            BSON_APPEND_BOOL(opts.get(), "upsert", true);
        bson_error_t err;
        bson_destroy(reply.get());
        bool ok = mongoc_collection_update_one(c.get(), filter, update, opts.get(), reply.get(), &err);
        if (!ok) {
            if (errOut)
                *errOut = err;
            return -1;
        }
        return static_cast<int>(internal::intField(reply.get(), "matchedCount") +
                                internal::intField(reply.get(), "upsertedCount"));
    }

    Found findUser(const std::string& name, Doc& out) {
        Doc f;
        internal::appendUserId(f.get(), "_id", name);
        return findOne("usersNew", f.get(), out);
    }

    enum class Cas { Applied, Refused, NotFound, Unavailable };

    // Reads the user, lets `plan` build the update, and writes it only if the
    // balance fields are still what was read. Retries on contention.
    // plan(const bson_t* user, bson_t* filter, bson_t* update) -> bool
    template <typename Plan> Cas casUser(const std::string& name, Plan&& plan) {
        thread_local std::mt19937 rng{std::random_device{}()};
        for (int attempt = 0; attempt < 200; ++attempt) {
            Doc user;
            Found f = findUser(name, user);
            if (f == Found::Error)
                return Cas::Unavailable;
            if (f == Found::No)
                return Cas::NotFound;
            Doc filter, update;
            internal::appendUserId(filter.get(), "_id", name);
            for (const char* field : kBalanceFields)
                internal::appendSameAs(filter.get(), field, user.get(), field);
            if (!plan(user.get(), filter.get(), update.get()))
                return Cas::Refused;
            if (bson_empty(update.get()))
                return Cas::Applied;
            int n = updateOne("usersNew", filter.get(), update.get());
            if (n < 0)
                return Cas::Unavailable;
            if (n > 0)
                return Cas::Applied;
            if (attempt > 2)
                std::this_thread::sleep_for(std::chrono::microseconds(rng() % (200 * std::min(attempt, 20))));
        }
        return Cas::Unavailable;
    }

    enum class Write { Inserted, Existed, Failed };
    void ensureIndexes();
    Write writeLog(const bson_t* entry);
    void unsetPending(const std::string& user, const std::string& id);
    Cas releaseOn(const std::string& user, const std::string& id);

    mongoc_client_pool_t* pool_;
    std::string db_;
    std::atomic<bool> indexed_{false};
    bool crashAfterCharge_ = false; // TROLLPROXY_TEST_FAILPOINT, for the crash tests
    std::mutex ownersMutex_;
    std::unordered_map<std::string, std::string> holdOwner_; // request id -> user, for release()
};

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
        PoolFields after{bal.credits - take.credits, bal.refCredits - take.refCredits, bal.creditsNew - take.creditsNew};
        bson_t set, hold, cond;
        BSON_APPEND_DOCUMENT_BEGIN(update, "$set", &set);
        setChangedBalances(&set, bal, after);
        bson_append_document_begin(&set, holdKey.c_str(), -1, &hold);
        BSON_APPEND_UTF8(&hold, "pool", poolName(h.pool));
        BSON_APPEND_INT64(&hold, "credits", take.credits);
        BSON_APPEND_INT64(&hold, "refCredits", take.refCredits);
        BSON_APPEND_INT64(&hold, "creditsNew", take.creditsNew);
        BSON_APPEND_INT64(&hold, "expiresAt", h.expiresAtMs);
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
    // settle() looks log entries up by requestId on every request; the unique
    // index also makes two racing upserts of one entry insert it only once.
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
    bson_append_array_end(cmd.get(), &indexes);
    bson_destroy(reply.get());
    bson_error_t err;
    bool ok = mongoc_collection_write_command_with_opts(c.get(), cmd.get(), nullptr, reply.get(), &err);
    // Only a network error is worth another try; a refusal (no permission, an
    // existing index with other options) is not going to change.
    if (ok || err.domain == MONGOC_ERROR_SERVER || err.domain == MONGOC_ERROR_WRITE_CONCERN)
        indexed_.store(true);
}

MongoLedger::Write MongoLedger::writeLog(const bson_t* entry) {
    ensureIndexes();
    Doc filter, update;
    bson_iter_t it;
    if (!bson_iter_init_find(&it, entry, "requestId"))
        return Write::Failed;
    bson_append_value(filter.get(), "requestId", -1, bson_iter_value(&it));
    BSON_APPEND_DOCUMENT(update.get(), "$setOnInsert", entry);
    Coll c(pool_, db_, "request_logs");
    Doc opts, reply;
    BSON_APPEND_BOOL(opts.get(), "upsert", true);
    bson_destroy(reply.get());
    bson_error_t err;
    if (!mongoc_collection_update_one(c.get(), filter.get(), update.get(), opts.get(), reply.get(), &err))
        return err.code == 11000 ? Write::Existed : Write::Failed; // lost a race to the same insert
    return internal::intField(reply.get(), "upsertedCount") > 0 ? Write::Inserted : Write::Existed;
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

namespace {

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

// The update that gives the hold at holdKey back to the fields it came from.
void appendGiveBack(const bson_t* user, const std::string& holdKey, bson_t* filter, bson_t* update) {
    PoolFields bal = readBalance(user), held = heldBy(user, holdKey);
    PoolFields after{bal.credits + held.credits, bal.refCredits + held.refCredits, bal.creditsNew + held.creditsNew};
    bson_t set, unset;
    BSON_APPEND_DOCUMENT_BEGIN(update, "$set", &set);
    setChangedBalances(&set, bal, after);
    bson_append_document_end(update, &set);
    BSON_APPEND_DOCUMENT_BEGIN(update, "$unset", &unset);
    BSON_APPEND_UTF8(&unset, holdKey.c_str(), "");
    bson_append_document_end(update, &unset);
    appendExists(filter, holdKey, true);
}

} // namespace

SettleOutcome MongoLedger::settle(const Charge& ch) {
    SettleOutcome out;
    std::string holdKey = "trollproxyHolds." + fieldSafe(ch.requestId);
    std::string pendingKey = "trollproxyPending." + fieldSafe(ch.requestId);
    Doc logFilter, existing;
    BSON_APPEND_UTF8(logFilter.get(), "requestId", ch.requestId.c_str());
    Found logged = findOne("request_logs", logFilter.get(), existing);
    if (logged == Found::Error)
        return out;
    if (logged == Found::Yes) {
        // Settled before. A hold taken again under this id (a retried request) goes back.
        unsetPending(ch.userId, ch.requestId);
        if (releaseOn(ch.userId, ch.requestId) == Cas::Unavailable)
            return out;
        out.status = SettleStatus::AlreadySettled;
        return out;
    }
    LogEntry entry{ch.requestId, ch.userId, ch.keyId, ch.model, ch.usage, Money{}, ch.cost,
                   poolCreditType(ch.pool), ch.statusCode, ch.latencyMs, ch.success, ch.createdAtMs};
    Doc record; // the log entry, as stored in the pending marker and then in request_logs
    Cas r = casUser(ch.userId, [&](const bson_t* user, bson_t* filter, bson_t* update) {
        bool hasHold = hasField(user, holdKey);
        bson_iter_t it;
        if (bson_iter_init(&it, user) && bson_iter_find_descendant(&it, pendingKey.c_str(), &it) &&
            BSON_ITER_HOLDS_DOCUMENT(&it)) {
            // The money moved before (a crash, or a racing settle) and its log
            // entry is not written yet: write that one; give back a newer hold.
            uint32_t len = 0;
            const uint8_t* data = nullptr;
            bson_iter_document(&it, &len, &data);
            bson_t marker;
            bson_reinit(record.get());
            if (bson_init_static(&marker, data, len))
                bson_copy_to_excluding_noinit(&marker, record.get(), "at", nullptr);
            if (hasHold)
                appendGiveBack(user, holdKey, filter, update);
            return true;
        }
        PoolFields bal = readBalance(user), held = heldBy(user, holdKey);
        internal::Settlement st = internal::settleAgainst(ch.pool, ch.cost.nanos, held, bal);
        entry.cost = Money{st.charged};
        entry.shortfall = Money{st.shortfall};
        bson_reinit(record.get());
        internal::appendLogEntry(record.get(), entry, poolName(ch.pool));
        bool isNew = ch.pool == Pool::CreditsNew;
        std::int64_t tokensIn = ch.usage.totalInput();
        bson_t set, inc, unset, pend;
        BSON_APPEND_DOCUMENT_BEGIN(update, "$set", &set);
        setChangedBalances(&set, bal, st.after);
        bson_append_document_begin(&set, pendingKey.c_str(), -1, &pend);
        bson_concat(&pend, record.get());
        BSON_APPEND_INT64(&pend, "at", nowMs());
        bson_append_document_end(&set, &pend);
        bson_append_document_end(update, &set);
        BSON_APPEND_DOCUMENT_BEGIN(update, "$inc", &inc);
        BSON_APPEND_DOUBLE(&inc, isNew ? "creditsNewUsed" : "creditsUsed", Money{st.charged}.toUsdDouble());
        if (isNew)
            BSON_APPEND_INT64(&inc, "tokensUserNew", tokensIn + ch.usage.output);
        BSON_APPEND_INT64(&inc, "totalInputTokens", tokensIn);
        BSON_APPEND_INT64(&inc, "totalOutputTokens", ch.usage.output);
        bson_append_document_end(update, &inc);
        if (hasHold) {
            BSON_APPEND_DOCUMENT_BEGIN(update, "$unset", &unset);
            BSON_APPEND_UTF8(&unset, holdKey.c_str(), "");
            bson_append_document_end(update, &unset);
        }
        appendExists(filter, holdKey, hasHold);
        appendExists(filter, pendingKey, false);
        return true;
    });
    if (r == Cas::Unavailable || r == Cas::Refused)
        return out;
    if (r == Cas::Applied && crashAfterCharge_)
        std::_Exit(86); // test failpoint: die between moving the money and writing its log entry
    if (r == Cas::NotFound) {
        // The user is gone: nothing to take; the whole cost is shortfall.
        bson_reinit(record.get());
        internal::appendLogEntry(record.get(), entry, poolName(ch.pool));
    }
    Write w = writeLog(record.get());
    if (w == Write::Failed)
        return out; // the pending marker keeps the retry (or the sweep) from applying it twice
    unsetPending(ch.userId, ch.requestId);
    {
        std::lock_guard lock(ownersMutex_);
        holdOwner_.erase(ch.requestId);
    }
    if (w == Write::Existed) {
        out.status = SettleStatus::AlreadySettled; // a racing settle of the same id wrote it
        return out;
    }
    LogEntry done = internal::logEntryFrom(record.get());
    Doc kf, ku;
    BSON_APPEND_UTF8(kf.get(), "_id", ch.keyId.c_str());
    bson_t inc, set;
    BSON_APPEND_DOCUMENT_BEGIN(ku.get(), "$inc", &inc);
    BSON_APPEND_INT64(&inc, "tokensUsed", ch.usage.totalInput() + ch.usage.output);
    BSON_APPEND_INT64(&inc, "requestsCount", 1);
    bson_append_document_end(ku.get(), &inc);
    BSON_APPEND_DOCUMENT_BEGIN(ku.get(), "$set", &set);
    BSON_APPEND_DATE_TIME(&set, "lastUsedAt", ch.createdAtMs);
    bson_append_document_end(ku.get(), &set);
    updateOne("user_keys", kf.get(), ku.get()); // statistics only
    out.status = SettleStatus::Settled;
    out.charged = done.cost;
    out.shortfall = done.shortfall;
    return out;
}

MongoLedger::Cas MongoLedger::releaseOn(const std::string& user, const std::string& id) {
    std::string holdKey = "trollproxyHolds." + fieldSafe(id);
    return casUser(user, [&](const bson_t* doc, bson_t* filter, bson_t* update) {
        if (hasField(doc, holdKey))
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
        bson_append_document_begin(filter.get(), ("trollproxyHolds." + fieldSafe(id)).c_str(), -1, &cond);
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

Result<std::int64_t> MongoLedger::sweepExpiredHolds(std::int64_t now) {
    // Also finishes settlements whose money moved but whose log entry a crashed
    // process never wrote (the pending marker holds the whole entry). A marker
    // younger than kPendingGraceMs may belong to a settle still running.
    constexpr std::int64_t kPendingGraceMs = 30'000;
    Coll c(pool_, db_, "usersNew");
    Doc filter, opts;
    bson_t list, alt, cond, proj;
    BSON_APPEND_ARRAY_BEGIN(filter.get(), "$or", &list);
    const char* owned[2] = {"trollproxyHolds", "trollproxyPending"};
    for (int i = 0; i < 2; ++i) {
        bson_append_document_begin(&list, i == 0 ? "0" : "1", -1, &alt);
        bson_append_document_begin(&alt, owned[i], -1, &cond);
        BSON_APPEND_BOOL(&cond, "$exists", true);
        bson_append_document_end(&alt, &cond);
        bson_append_document_end(&list, &alt);
    }
    bson_append_array_end(filter.get(), &list);
    BSON_APPEND_DOCUMENT_BEGIN(opts.get(), "projection", &proj);
    BSON_APPEND_INT32(&proj, "trollproxyHolds", 1);
    BSON_APPEND_INT32(&proj, "trollproxyPending", 1);
    bson_append_document_end(opts.get(), &proj);
    mongoc_cursor_t* cur = mongoc_collection_find_with_opts(c.get(), filter.get(), opts.get(), nullptr);
    std::vector<std::pair<std::string, std::string>> expired;
    std::vector<std::pair<std::string, std::unique_ptr<Doc>>> pending;
    const bson_t* d = nullptr;
    while (mongoc_cursor_next(cur, &d)) {
        bson_iter_t it, sub, entry;
        std::string user;
        if (bson_iter_init_find(&it, d, "_id"))
            user = internal::userNameOf(&it);
        if (bson_iter_init_find(&sub, d, "trollproxyHolds") && BSON_ITER_HOLDS_DOCUMENT(&sub) &&
            bson_iter_recurse(&sub, &entry)) {
            while (bson_iter_next(&entry)) {
                bson_iter_t exp;
                if (bson_iter_recurse(&entry, &exp) && bson_iter_find(&exp, "expiresAt") &&
                    bson_iter_as_int64(&exp) < now)
                    expired.emplace_back(user, bson_iter_key(&entry));
            }
        }
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

// Administration.

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

Result<void> MongoLedger::credit(std::string_view name, std::string_view field, Money amount) {
    int index = field == "credits" ? 0 : field == "refCredits" ? 1 : field == "creditsNew" ? 2 : -1;
    if (index < 0)
        return Error{ErrorCode::InvalidArgument,
                     "unknown pool \"" + std::string(field) + "\" (one of credits, refCredits, creditsNew)"};
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

Result<Balance> MongoLedger::balance(std::string_view name) {
    Doc doc;
    Found f = findUser(std::string(name), doc);
    if (f == Found::Error)
        return Error{ErrorCode::Unavailable, "MongoDB is unavailable"};
    if (f == Found::No)
        return Error{ErrorCode::NotFound, "no user " + std::string(name)};
    auto m = [&](const char* k) { return internal::moneyField(doc.get(), k).value_or(Money{}); };
    return Balance{m("credits"), m("creditsUsed"), m("refCredits"), m("creditsNew"), m("creditsNewUsed"),
                   internal::intField(doc.get(), "tokensUserNew"), internal::intField(doc.get(), "totalInputTokens"),
                   internal::intField(doc.get(), "totalOutputTokens")};
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
    mongoc_cursor_t* cur = mongoc_collection_find_with_opts(c.get(), filter.get(), opts.get(), nullptr);
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
    mongoc_cursor_t* cur = mongoc_collection_find_with_opts(c.get(), filter.get(), nullptr, nullptr);
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

} // namespace

Result<std::unique_ptr<CreditLedger>> openMongoLedger(std::string_view uriText, const LedgerOptions& options) {
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
    for (const char* o : {MONGOC_URI_SERVERSELECTIONTIMEOUTMS, MONGOC_URI_CONNECTTIMEOUTMS, MONGOC_URI_SOCKETTIMEOUTMS}) {
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
    return std::unique_ptr<CreditLedger>(new MongoLedger(pool, std::move(db)));
}

} // namespace trollproxy
