// MongoLedger::settle and settleBatch. A batch's charges are grouped by user; each user's
// are applied in one compare-and-set that moves the money (own holds, slices, balances)
// and leaves every charge's log entry in a pending marker; then come one bulk write of
// the log entries, one removing the markers and one of the keys' statistics. A crash
// between leaves markers that a retry or the sweep finishes (mongo_sweep.cpp).
#include <algorithm>
#include <deque>

#include "ledger/mongo_ledger_impl.hpp"
#include "ledger/test_hooks.hpp"

namespace trollproxy::internal::mongo {

namespace {

// The log entry of a charge that took `charged` and fell `shortfall` short.
void appendEntryOf(const Charge& c, std::int64_t charged, std::int64_t shortfall, bson_t* record) {
    LogEntry e{c.requestId,  c.userId,       c.keyId,          c.model,
               c.usage,      Money{charged}, Money{shortfall}, poolCreditType(c.pool),
               c.statusCode, c.latencyMs,    c.success,        c.createdAtMs,
               c.responseId};
    bson_reinit(record);
    internal::appendLogEntry(record, e, poolName(c.pool));
}

PoolFields plus(const PoolFields& a, const PoolFields& b) {
    return {a.credits + b.credits, a.refCredits + b.refCredits, a.creditsNew + b.creditsNew};
}

// A hold the plan reads or changes: a request's own, or a slice drawn on.
struct HoldUse {
    PoolFields held;
    bool present = false;
    bool removed = false; // consumed or given back: $unset
    bool drawn = false;   // used as a slice: guard its amounts, store the new ones
};

// The counters a user's charges add up to.
struct Totals {
    std::int64_t creditsUsed = 0, creditsNewUsed = 0, tokensUserNew = 0, input = 0, output = 0;
    bool anyCredits = false, anyNew = false;
};

// settleBatch()'s compare-and-set plan for one user, run again on every attempt: the
// user's charges in order against one running balance, as one update.
class UserPlan {
public:
    UserPlan(std::vector<BatchItem*>& items, const std::unordered_set<std::string>& logged)
        : items_(items), logged_(logged) {}

    bool operator()(const bson_t* user, bson_t* filter, bson_t* update) {
        user_ = user;
        balBefore_ = bal_ = readBalance(user);
        holds_.clear();
        totals_ = {};
        bson_reinit(set_.get());
        bson_reinit(unset_.get());
        std::unordered_set<std::string> seen;
        for (BatchItem* it : items_) {
            if (seen.insert(it->ch->requestId).second)
                planOne(*it, filter);
            else
                it->fate = Fate::Duplicate;
        }
        finish(filter, update);
        return true;
    }

private:
    HoldUse& use(const std::string& key) {
        auto [it, added] = holds_.try_emplace(key);
        if (added && hasField(user_, key)) {
            it->second.present = true;
            it->second.held = heldBy(user_, key);
        }
        return it->second;
    }

    // What the hold at key holds, taken out of it (it goes away with the update).
    PoolFields take(const std::string& key) {
        HoldUse& h = use(key);
        if (!h.present || h.removed)
            return {};
        h.removed = true;
        return h.held;
    }

    void planOne(BatchItem& it, bson_t* filter) {
        const Charge& ch = *it.ch;
        const std::string id = fieldSafe(ch.requestId);
        const std::string pendingKey = "trollproxyPending." + id;
        // A charge on a slice named like the request has no hold of its own.
        const bool ownHold = ch.holdId != ch.requestId;
        bson_iter_t marker;
        bool pending = bson_iter_init(&marker, user_) &&
                       bson_iter_find_descendant(&marker, pendingKey.c_str(), &marker) &&
                       BSON_ITER_HOLDS_DOCUMENT(&marker);
        bool logged = logged_.count(ch.requestId) > 0;
        if (logged || pending) {
            // Settled before, or its money moved before: only a hold taken again under
            // this id goes back (never the slice).
            it.fate = logged ? Fate::Logged : Fate::FromMarker;
            if (logged && pending)
                BSON_APPEND_UTF8(unset_.get(), pendingKey.c_str(), "");
            if (!logged)
                copyMarker(&marker, it.record.get());
            if (ownHold)
                bal_ = plus(bal_, take("trollproxyHolds." + id));
            return;
        }
        PoolFields own = ownHold ? take("trollproxyHolds." + id) : PoolFields{};
        Settlement st;
        if (ch.holdId.empty()) {
            st = settleAgainst(ch.pool, ch.cost.nanos, own, bal_);
        } else {
            // The charge's own hold (if any) goes back first; then it draws on the slice.
            HoldUse& slice = use("trollproxyHolds." + fieldSafe(ch.holdId));
            slice.drawn = true;
            bool live = slice.present && !slice.removed;
            SliceSettlement s =
                settleAgainstSlice(ch.pool, ch.cost.nanos, ch.holdShare.nanos,
                                   live ? slice.held : PoolFields{}, plus(bal_, own));
            if (live)
                slice.held = s.heldAfter;
            st = s.settlement;
        }
        bal_ = st.after;
        it.fate = Fate::Apply;
        appendEntryOf(ch, st.charged, st.shortfall, it.record.get());
        bson_t pend;
        bson_append_document_begin(set_.get(), pendingKey.c_str(), -1, &pend);
        bson_concat(&pend, it.record.get());
        BSON_APPEND_INT64(&pend, "at", nowMs());
        bson_append_document_end(set_.get(), &pend);
        appendExists(filter, pendingKey, false);
        count(ch, st.charged);
    }

    void count(const Charge& ch, std::int64_t charged) {
        std::int64_t in = ch.usage.totalInput();
        if (ch.pool == Pool::CreditsNew) {
            totals_.anyNew = true;
            totals_.creditsNewUsed += charged;
            totals_.tokensUserNew += in + ch.usage.output;
        } else {
            totals_.anyCredits = true;
            totals_.creditsUsed += charged;
        }
        totals_.input += in;
        totals_.output += ch.usage.output;
    }

    // The holds' conditions and changes, the balances, the counters: into filter and update.
    void finish(bson_t* filter, bson_t* update) {
        for (const auto& [key, h] : holds_) {
            if (h.drawn) {
                appendSameHeld(filter, user_, key); // other charges draw on it concurrently
                if (h.present && !h.removed) {
                    BSON_APPEND_INT64(set_.get(), (key + ".credits").c_str(), h.held.credits);
                    BSON_APPEND_INT64(set_.get(), (key + ".refCredits").c_str(), h.held.refCredits);
                    BSON_APPEND_INT64(set_.get(), (key + ".creditsNew").c_str(), h.held.creditsNew);
                }
            }
            if (h.removed)
                BSON_APPEND_UTF8(unset_.get(), key.c_str(), "");
            if (!h.drawn || h.removed)
                appendExists(filter, key, h.present);
        }
        setChangedBalances(set_.get(), balBefore_, bal_);
        if (!bson_empty(set_.get()))
            BSON_APPEND_DOCUMENT(update, "$set", set_.get());
        if (!bson_empty(unset_.get()))
            BSON_APPEND_DOCUMENT(update, "$unset", unset_.get());
        if (!totals_.anyNew && !totals_.anyCredits)
            return;
        bson_t inc;
        BSON_APPEND_DOCUMENT_BEGIN(update, "$inc", &inc);
        if (totals_.anyCredits)
            BSON_APPEND_DOUBLE(&inc, "creditsUsed", Money{totals_.creditsUsed}.toUsdDouble());
        if (totals_.anyNew) {
            BSON_APPEND_DOUBLE(&inc, "creditsNewUsed", Money{totals_.creditsNewUsed}.toUsdDouble());
            BSON_APPEND_INT64(&inc, "tokensUserNew", totals_.tokensUserNew);
        }
        BSON_APPEND_INT64(&inc, "totalInputTokens", totals_.input);
        BSON_APPEND_INT64(&inc, "totalOutputTokens", totals_.output);
        bson_append_document_end(update, &inc);
    }

    std::vector<BatchItem*>& items_;
    const std::unordered_set<std::string>& logged_;
    const bson_t* user_ = nullptr;
    PoolFields balBefore_, bal_;
    std::map<std::string, HoldUse> holds_;
    Totals totals_;
    Doc set_, unset_;
};

} // namespace

// The outcome of an item whose log entry was written (or not) as `w` says.
SettleOutcome MongoLedger::outcomeOf(const BatchItem& it, Write w) {
    SettleOutcome out;
    if (w == Write::Failed)
        return out; // LedgerUnavailable: the marker keeps a retry from applying it twice
    if (w == Write::Existed) {
        out.status = SettleStatus::AlreadySettled; // a racing settle of the same id wrote it
        return out;
    }
    LogEntry done = internal::logEntryFrom(it.record.get());
    out.status = SettleStatus::Settled;
    out.charged = done.cost;
    out.shortfall = done.shortfall;
    return out;
}

MongoLedger::Cas MongoLedger::settleUser(const std::string& user, std::vector<BatchItem*>& items,
                                         const std::unordered_set<std::string>& logged,
                                         const bson_t* read) {
    UserPlan plan(items, logged);
    Cas r = casUser(user, plan, read);
    if (r == Cas::NotFound) {
        // The user is gone: nothing to take; the whole cost is shortfall.
        std::unordered_set<std::string> seen;
        for (BatchItem* it : items) {
            const Charge& c = *it->ch;
            if (!seen.insert(c.requestId).second)
                it->fate = Fate::Duplicate;
            else if (logged.count(c.requestId))
                it->fate = Fate::Logged;
            else {
                it->fate = Fate::NoUser;
                appendEntryOf(c, 0, std::max<std::int64_t>(c.cost.nanos, 0), it->record.get());
            }
        }
    } else if (r != Cas::Applied) {
        for (BatchItem* it : items)
            it->fate = Fate::Unavailable;
    }
    return r;
}

SettleOutcome MongoLedger::settle(const Charge& charge) {
    return settleBatch(std::span<const Charge>(&charge, 1)).front();
}

std::vector<SettleOutcome> MongoLedger::settleBatch(std::span<const Charge> charges) {
    std::unordered_set<std::string> logged;
    if (charges.empty() || findLogged(charges, logged) == Found::Error)
        return std::vector<SettleOutcome>(charges.size());
    std::deque<BatchItem> items;
    std::map<std::string, std::vector<BatchItem*>> byUser;
    for (const Charge& c : charges) {
        items.emplace_back().ch = &c;
        byUser[c.userId].push_back(&items.back());
    }
    std::map<std::string, Doc> docs; // read in one round trip for every user's first attempt
    if (findUsers(byUser, docs) == Found::Error)
        docs.clear();
    for (auto& [user, list] : byUser) {
        auto d = docs.find(user);
        settleUser(user, list, logged, d == docs.end() ? nullptr : d->second.get());
    }
    std::vector<BatchItem*> toLog;
    for (BatchItem& it : items) {
        if (it.fate == Fate::Apply || it.fate == Fate::FromMarker || it.fate == Fate::NoUser)
            toLog.push_back(&it);
    }
    if (std::any_of(toLog.begin(), toLog.end(), [](auto* it) { return it->fate != Fate::NoUser; }))
        ledgerTestPoint("mongo-crash-after-charge"); // the money moved, no log entry written yet
    finishLogs(toLog);

    std::vector<SettleOutcome> out;
    out.reserve(items.size());
    std::unordered_map<std::string, SettleStatus> first; // a duplicate follows its first
    std::lock_guard lock(ownersMutex_);
    for (BatchItem& it : items) {
        SettleOutcome o = it.outcome;
        if (it.fate == Fate::Logged)
            o.status = SettleStatus::AlreadySettled;
        if (it.fate == Fate::Duplicate &&
            first[it.ch->requestId] != SettleStatus::LedgerUnavailable)
            o.status = SettleStatus::AlreadySettled;
        first.try_emplace(it.ch->requestId, o.status);
        if (o.status != SettleStatus::LedgerUnavailable)
            holdOwner_.erase(it.ch->requestId);
        out.push_back(o);
    }
    return out;
}

void MongoLedger::finishLogs(const std::vector<BatchItem*>& toLog) {
    if (toLog.empty())
        return;
    std::vector<Write> written = writeLogs(toLog);
    std::map<std::string, std::vector<std::string>> markers;
    std::vector<const Charge*> settled;
    for (std::size_t i = 0; i < toLog.size(); ++i) {
        BatchItem& it = *toLog[i];
        it.outcome = outcomeOf(it, written[i]);
        if (written[i] != Write::Failed && it.fate != Fate::NoUser)
            markers[it.ch->userId].push_back(it.ch->requestId);
        if (written[i] == Write::Inserted)
            settled.push_back(it.ch);
    }
    if (!markers.empty())
        unsetPendingMany(markers);
    if (!settled.empty())
        countKeyUse(settled);
}

} // namespace trollproxy::internal::mongo
