// MongoLedger::reserveSlice: a budget slice is a hold many charges draw on; adding to it
// is one compare-and-set on the user document that also guards the slice's own fields.
#include "ledger/mongo_ledger_impl.hpp"

namespace trollproxy::internal::mongo {

namespace {

// $set: the balances after `take`, and the slice with `take` added to what it held
// (created when absent); the filter requires the slice's fields to be what was read.
void appendSliceGrowth(const SliceRequest& r, const std::string& holdKey, const bson_t* user,
                       const PoolFields& bal, const PoolFields& take, bson_t* filter,
                       bson_t* update) {
    PoolFields held = heldBy(user, holdKey);
    PoolFields after{bal.credits - take.credits, bal.refCredits - take.refCredits,
                     bal.creditsNew - take.creditsNew};
    bson_t set, hold;
    BSON_APPEND_DOCUMENT_BEGIN(update, "$set", &set);
    setChangedBalances(&set, bal, after);
    bson_append_document_begin(&set, holdKey.c_str(), -1, &hold);
    BSON_APPEND_UTF8(&hold, "pool", poolName(r.pool));
    BSON_APPEND_INT64(&hold, "credits", held.credits + take.credits);
    BSON_APPEND_INT64(&hold, "refCredits", held.refCredits + take.refCredits);
    BSON_APPEND_INT64(&hold, "creditsNew", held.creditsNew + take.creditsNew);
    BSON_APPEND_INT64(&hold, "expiresAt", r.expiresAtMs);
    // The key is fieldSafe(id); releaseHolds() matches prefixes on the id itself.
    BSON_APPEND_UTF8(&hold, "requestId", r.sliceId.c_str());
    bson_append_document_end(&set, &hold);
    bson_append_document_end(update, &set);
    appendSameHeld(filter, user, holdKey);
}

} // namespace

SliceGrant MongoLedger::reserveSlice(const SliceRequest& r) {
    std::string holdKey = "trollproxyHolds." + fieldSafe(r.sliceId);
    std::int64_t added = 0;
    Cas c = casUser(r.userId, [&](const bson_t* user, bson_t* filter, bson_t* update) {
        // An id already holding another pool's money is not this slice (as on SQLite).
        if (hasField(user, holdKey) &&
            internal::stringField(user, (holdKey + ".pool").c_str()) != poolName(r.pool))
            return false;
        PoolFields bal = readBalance(user), take;
        added = internal::sliceAmount(r.pool, bal, r.want.nanos, r.atLeast.nanos, r.freePermille);
        if (added <= 0 || !internal::takeHold(r.pool, added, bal, take))
            return false;
        appendSliceGrowth(r, holdKey, user, bal, take, filter, update);
        return true;
    });
    switch (c) {
    case Cas::Applied: {
        std::lock_guard lock(ownersMutex_);
        holdOwner_[r.sliceId] = r.userId;
        return {ReserveStatus::Reserved, Money{added}};
    }
    case Cas::Refused:
    case Cas::NotFound:
        return {ReserveStatus::InsufficientCredits, Money{}};
    case Cas::Unavailable:
        break;
    }
    return {ReserveStatus::LedgerUnavailable, Money{}};
}

} // namespace trollproxy::internal::mongo
