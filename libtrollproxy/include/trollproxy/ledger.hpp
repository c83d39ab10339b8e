// CreditLedger: the users' keys and money on the request path. One interface, several backends.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "trollproxy/money.hpp"
#include "trollproxy/pool.hpp"
#include "trollproxy/result.hpp"
#include "trollproxy/usage.hpp"

namespace trollproxy {

/// Who a key belongs to.
struct Account {
    std::string userId; ///< the user's name (production: `usersNew._id`)
    std::string keyId;  ///< the key as stored: SQLite its SHA-256 (hex), MongoDB the key itself
    bool admin = false;
};

enum class AuthStatus {
    Authorized,
    KeyInvalid,        ///< no such key
    KeyRevoked,        ///< key or user inactive
    KeyExpired,        ///< past `expiresAt`
    MigrationRequired, ///< non-admin user with `migration: false`
    LedgerUnavailable,
};

struct AuthOutcome {
    AuthStatus status = AuthStatus::KeyInvalid;
    Account account; ///< set when Authorized
};

/// A hold on a pool for one request, taken before forwarding.
struct HoldRequest {
    std::string requestId;
    std::string userId;
    Pool pool = Pool::CreditsNew;
    Money amount;
    std::int64_t expiresAtMs = 0; ///< after this a sweep releases it
};

enum class ReserveStatus { Reserved, InsufficientCredits, LedgerUnavailable };

/// A budget slice: one process's reservation on a (user, pool), held in the
/// ledger like a request's hold (same id space, same expiry, sweep and
/// releaseHolds) and drawn on by many requests' charges (Charge::holdId).
struct SliceRequest {
    std::string sliceId; ///< the hold's id: the instance's prefix, pool, user, epoch
    std::string userId;
    Pool pool = Pool::CreditsNew;
    /// What to add to the slice: min(want, the pool's free balance ×
    /// freePermille / 1000), refused when that is below atLeast.
    Money want;
    Money atLeast;
    std::int64_t freePermille = 500;
    std::int64_t expiresAtMs = 0; ///< the slice's new expiry (it is renewed too)
};

struct SliceGrant {
    ReserveStatus status = ReserveStatus::LedgerUnavailable;
    Money added; ///< what was moved from the pool into the slice (Reserved only)
};

/// The final charge of one request. Settling writes the request log entry too.
struct Charge {
    std::string requestId;
    std::string userId;
    std::string keyId;
    std::string model;
    Pool pool = Pool::CreditsNew;
    Usage usage;
    Money cost;
    int statusCode = 200;
    std::int64_t latencyMs = 0;
    bool success = true;
    std::int64_t createdAtMs = 0;
    /// Responses API: the id of the response this request created ("" for
    /// other routes); recorded so that only this user can reach it later.
    std::string responseId;
    /// The hold the charge draws on. Empty: the request's own hold (id
    /// requestId), replaced whole by the charge (the rest goes back to the pool).
    /// A slice's id: at most holdShare of the cost comes out of that hold, which
    /// keeps the rest; any cost beyond comes from the pool's free balance.
    std::string holdId;
    Money holdShare;
};

enum class SettleStatus {
    Settled,           ///< applied now
    AlreadySettled,    ///< this request id was settled before; nothing changed
    LedgerUnavailable, ///< nothing changed; the caller must journal the charge
};

struct SettleOutcome {
    SettleStatus status = SettleStatus::LedgerUnavailable;
    Money charged;   ///< what was taken from the pool
    Money shortfall; ///< cost that could not be taken (balance ran out)
};

/// One `request_logs` entry.
struct LogEntry {
    std::string requestId;
    std::string userId;
    std::string keyId;
    std::string model;
    Usage usage;
    Money cost;
    Money shortfall;
    std::string creditType; ///< "openhands" (creditsNew) or "ohmygpt" (credits)
    int statusCode = 0;
    std::int64_t latencyMs = 0;
    bool success = false;
    std::int64_t createdAtMs = 0;
    std::string responseId; ///< Responses API: the response the request created
};

/// The money store as the request path sees it: keys, holds, charges. All
/// operations are safe to call from many threads, and from several processes
/// sharing one database. Administration is LedgerAdmin (ledger_admin.hpp).
class CreditLedger {
public:
    virtual ~CreditLedger() = default;

    /// Looks up an API key: `usersNew.apiKey`, or `user_keys._id` naming a user.
    virtual AuthOutcome authenticate(std::string_view apiKey) = 0;

    /// Takes `amount` out of the pool into a hold, atomically, or refuses.
    virtual ReserveStatus reserve(const HoldRequest& hold) = 0;

    /// Replaces the request's hold (if any) by the actual cost, applies token
    /// counters and writes the request log entry, exactly once per request id.
    /// Without a hold (served while the ledger was down) it takes the cost from
    /// the pool directly. With Charge::holdId the cost is drawn on that slice
    /// (at most holdShare; the slice keeps the rest, and a settled-before id
    /// leaves the slice alone). Never takes a balance field below zero.
    virtual SettleOutcome settle(const Charge& charge) = 0;

    /// Adds to a budget slice (creating it) from the pool's free balance,
    /// atomically, and moves its expiry to request.expiresAtMs; see SliceRequest.
    /// InsufficientCredits changes nothing.
    virtual SliceGrant reserveSlice(const SliceRequest& request) = 0;

    /// Settles many charges, each as settle() would, in as few round trips as
    /// the backend can (SQLite: one transaction; MongoDB: one compare-and-set
    /// per user and one bulk insert of log entries). outcomes[i] is charges[i]'s;
    /// a charge LedgerUnavailable was not applied and may be retried. The
    /// default settles them one by one.
    virtual std::vector<SettleOutcome> settleBatch(std::span<const Charge> charges);

    /// Returns a hold (a request's or a slice's) to the pool unspent.
    virtual Result<void> release(std::string_view requestId) = 0;

    /// Moves an outstanding hold's expiry to `expiresAtMs` (a running stream keeps its
    /// hold). NotFound when the request holds nothing (settled, released or swept).
    virtual Result<void> renewHold(std::string_view requestId, std::int64_t expiresAtMs) = 0;

    /// Releases holds whose expiry is before nowMs. Returns how many.
    virtual Result<std::int64_t> sweepExpiredHolds(std::int64_t nowMs) = 0;

    /// Releases every outstanding hold whose request id starts with
    /// `requestIdPrefix` (the holds of a process that died: a restarted process
    /// passes its own prefix), returning their money to the pools exactly as
    /// release() does. The prefix is matched literally. Returns how many. An empty
    /// prefix is InvalidArgument (it would release everyone's).
    virtual Result<std::int64_t> releaseHolds(std::string_view requestIdPrefix) = 0;

    /// Responses API: the user whose settled request created `responseId`.
    /// NotFound when no request recorded it.
    virtual Result<std::string> responseOwner(std::string_view responseId) = 0;

    /// Writes a log entry for a request that was not charged (refused, failed).
    virtual Result<void> recordRequest(const LogEntry& entry) = 0;

    /// True when the database answers now (bounded time).
    virtual bool ping() = 0;
};

/// Options for opening a ledger.
struct LedgerOptions {
    std::int64_t timeoutMs = 3000; ///< bound on one database operation
    std::string writeConcern;      ///< MongoDB: "", "1" or "majority"
};

/// Opens a ledger from a URI: `sqlite:PATH` (created mode 0600; add
/// `?synchronous=full` for an fsync per commit) or `mongodb://...` (database
/// from the URI path, else MONGODB_DB_NAME, else "fproxy").
Result<std::unique_ptr<CreditLedger>> openLedger(std::string_view uri,
                                                 const LedgerOptions& options = {});

/// The default ledger URI: MONGODB_URI when set, else "sqlite:trollproxy.db".
std::string defaultLedgerUri();

} // namespace trollproxy
