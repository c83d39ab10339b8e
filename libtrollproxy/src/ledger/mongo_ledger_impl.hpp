// The MongoDB ledger's class and the helpers its source files share (mongo_ledger.cpp:
// the request path; mongo_slices.cpp: budget slices; mongo_batch*.cpp: settle and
// settleBatch; mongo_sweep.cpp, mongo_release.cpp: giving holds back; mongo_admin.cpp:
// administration).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <mongoc/mongoc.h>

#include "ledger/backend.hpp"
#include "ledger/mongo_doc.hpp"
#include "ledger/pool_math.hpp"

namespace trollproxy::internal::mongo {

inline constexpr const char* kBalanceFields[3] = {"credits", "refCredits", "creditsNew"};

std::int64_t nowMs();
/// Request ids become field names: keep them free of '.' and '$'.
std::string fieldSafe(std::string_view id);
PoolFields readBalance(const bson_t* user);
/// Appends $set entries for the balance fields that change.
void setChangedBalances(bson_t* set, const PoolFields& before, const PoolFields& after);
bool hasField(const bson_t* doc, const std::string& path);
/// What the hold at holdKey ("trollproxyHolds.<id>") holds; zero when absent.
PoolFields heldBy(const bson_t* user, const std::string& holdKey);
/// Appends `path: {$exists: exists}` to a filter.
void appendExists(bson_t* filter, const std::string& path, bool exists);
/// Appends a compare-and-set condition on the hold's three amounts (absent stays absent).
void appendSameHeld(bson_t* filter, const bson_t* user, const std::string& holdKey);
/// Copies the pending marker at `it` into record, without the time it was written.
void copyMarker(const bson_iter_t* it, bson_t* record);

/// What the plan made of a charge.
enum class Fate {
    Unavailable, ///< its user's compare-and-set failed: nothing done
    Apply,       ///< the money moved now, its log entry is in a pending marker
    FromMarker,  ///< the money moved before (a crash, a racing settle): finish its entry
    Logged,      ///< settled before: only a hold under its id goes back
    Duplicate,   ///< its id came earlier in the batch
    NoUser,      ///< the user is gone: logged with the whole cost as shortfall
};

/// One charge of a settleBatch() and what became of it (mongo_batch.cpp).
struct BatchItem {
    const Charge* ch = nullptr;
    Fate fate = Fate::Unavailable;
    Doc record;            ///< its log entry (Apply, FromMarker, NoUser)
    SettleOutcome outcome; ///< once its log entry was written (or not)
};

class MongoLedger final : public LedgerBackend {
public:
    MongoLedger(mongoc_client_pool_t* pool, std::string db) : pool_(pool), db_(std::move(db)) {}
    ~MongoLedger() override { mongoc_client_pool_destroy(pool_); }

    AuthOutcome authenticate(std::string_view apiKey) override;
    ReserveStatus reserve(const HoldRequest& hold) override;
    SettleOutcome settle(const Charge& charge) override;
    SliceGrant reserveSlice(const SliceRequest& request) override;
    std::vector<SettleOutcome> settleBatch(std::span<const Charge> charges) override;
    Result<void> release(std::string_view requestId) override;
    Result<void> renewHold(std::string_view requestId, std::int64_t expiresAtMs) override;
    Result<std::int64_t> sweepExpiredHolds(std::int64_t nowMs) override;
    Result<std::int64_t> releaseHolds(std::string_view requestIdPrefix) override;
    Result<std::string> responseOwner(std::string_view responseId) override;
    Result<void> recordRequest(const LogEntry& entry) override;
    bool ping() override;
    Result<void> addUser(std::string_view name) override;
    Result<std::string> addKey(std::string_view name) override;
    Result<void> revokeKey(std::string_view apiKey) override;
    Result<void> credit(std::string_view name, BalanceField field, Money amount) override;
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

    Found findOne(const char* collection, const bson_t* filter, Doc& out,
                  const bson_t* opts = nullptr) {
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
    int updateOne(const char* collection, const bson_t* filter, const bson_t* update,
                  bool upsert = false, bson_error_t* errOut = nullptr) {
        Coll c(pool_, db_, collection);
        Doc opts, reply;
        if (upsert)
            BSON_APPEND_BOOL(opts.get(), "upsert", true);
        bson_error_t err;
        bson_destroy(reply.get());
        bool ok =
            mongoc_collection_update_one(c.get(), filter, update, opts.get(), reply.get(), &err);
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
    // balance fields are still what was read. Retries on contention. The first
    // attempt may use a document read before (`read`, from findUsers()).
    // plan(const bson_t* user, bson_t* filter, bson_t* update) -> bool
    template <typename Plan>
    Cas casUser(const std::string& name, Plan&& plan, const bson_t* read = nullptr) {
        thread_local std::mt19937 rng{std::random_device{}()};
        for (int attempt = 0; attempt < 200; ++attempt) {
            Doc user;
            Found f = Found::Yes;
            if (attempt == 0 && read)
                bson_copy_to_excluding_noinit(read, user.get(), "", nullptr);
            else
                f = findUser(name, user);
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
                std::this_thread::sleep_for(
                    std::chrono::microseconds(rng() % (200 * std::min(attempt, 20))));
        }
        return Cas::Unavailable;
    }

    enum class Write { Inserted, Existed, Failed };
    void ensureIndexes();
    /// Inserts a log entry under its own `_id` (internal::logEntryId).
    Write writeLog(const bson_t* entry);
    /// After a duplicate-key refusal of an entry's insert: Existed when the stored entry
    /// with its _id is this request's; otherwise the upsert keyed by requestId decides.
    Write resolveDuplicate(const bson_t* entry);
    /// Writes the entry unless one with its requestId exists.
    Write upsertLog(const bson_t* entry);
    // settleBatch()'s steps (mongo_batch.cpp, mongo_batch_write.cpp).
    Found findLogged(std::span<const Charge> charges, std::unordered_set<std::string>& logged);
    /// The users' documents in one find, by name; absent ones are left out.
    Found findUsers(const std::map<std::string, std::vector<BatchItem*>>& byUser,
                    std::map<std::string, Doc>& docs);
    /// One compare-and-set applying `items` (one user's charges, in order); its first
    /// attempt on `read` when given.
    Cas settleUser(const std::string& user, std::vector<BatchItem*>& items,
                   const std::unordered_set<std::string>& logged, const bson_t* read);
    /// Writes the items' log entries, then removes their markers and counts the keys'
    /// use; sets each item's outcome.
    void finishLogs(const std::vector<BatchItem*>& toLog);
    static SettleOutcome outcomeOf(const BatchItem& item, Write w);
    /// One unordered bulk of inserts of the items' log entries; each one's outcome in order.
    std::vector<Write> writeLogs(const std::vector<BatchItem*>& items);
    /// One bulk update removing each user's pending markers of the given request ids.
    void unsetPendingMany(const std::map<std::string, std::vector<std::string>>& idsByUser);
    /// One bulk update of the keys' statistics for the charges settled now.
    void countKeyUse(const std::vector<const Charge*>& settled);
    void unsetPending(const std::string& user, const std::string& id);
    Cas releaseOn(const std::string& user, const std::string& id);
    /// The same; gaveBack tells whether this call returned the hold (false: it was gone).
    Cas releaseOn(const std::string& user, const std::string& id, bool& gaveBack);

    mongoc_client_pool_t* pool_;
    std::string db_;
    std::atomic<bool> indexed_{false};
    std::mutex ownersMutex_;
    std::unordered_map<std::string, std::string> holdOwner_; // request id -> user, for release()
};

} // namespace trollproxy::internal::mongo
