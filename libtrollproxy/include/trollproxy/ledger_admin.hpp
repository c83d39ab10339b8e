// LedgerAdmin: users, keys, credits and reports, for operators. The request path is CreditLedger.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "trollproxy/ledger.hpp"
#include "trollproxy/money.hpp"
#include "trollproxy/pool.hpp"
#include "trollproxy/result.hpp"

namespace trollproxy {

/// A user's balance fields.
struct Balance {
    Money credits;
    Money creditsUsed;
    Money refCredits;
    Money creditsNew;
    Money creditsNewUsed;
    std::int64_t tokensUserNew = 0;
    std::int64_t totalInputTokens = 0;
    std::int64_t totalOutputTokens = 0;
    /// Money in outstanding holds (requests in flight, or left by a process that
    /// died until releaseHolds() or the sweep), by the field it was taken from. It
    /// is not in the fields above: a hold moved it out until its request settles.
    /// A Credits-pool hold takes `credits` first, then `refCredits`.
    Money heldCredits;
    Money heldRefCredits;
    Money heldCreditsNew; ///< the CreditsNew pool's holds
};

/// Administration of the same store a CreditLedger charges: what
/// `trollproxy-admin` and an embedding service's back office need. Safe to use
/// while servers charge the same database.
class LedgerAdmin {
public:
    virtual ~LedgerAdmin() = default;

    /// Creates a user with empty balances. Conflict when the name exists.
    virtual Result<void> addUser(std::string_view name) = 0;
    /// Creates a new `sk-trollllm-` + 64 hex key for the user and returns it (the
    /// only time it is shown: the SQLite ledger stores its SHA-256 only).
    virtual Result<std::string> addKey(std::string_view name) = 0;
    /// Makes the key answer KeyRevoked from now on. NotFound for an unknown key.
    virtual Result<void> revokeKey(std::string_view apiKey) = 0;
    /// Adds a non-negative amount to one balance field.
    virtual Result<void> credit(std::string_view name, BalanceField field, Money amount) = 0;
    /// The user's balance fields. NotFound for an unknown user.
    virtual Result<Balance> balance(std::string_view name) = 0;
    /// The user's latest log entries, newest first.
    virtual Result<std::vector<LogEntry>> usage(std::string_view name, std::int64_t last) = 0;
    /// Total shortfall recorded (cost that could not be taken), over all users.
    virtual Result<Money> totalShortfall() = 0;
};

/// Opens the administration side of a ledger; the URI and options are as for
/// openLedger().
Result<std::unique_ptr<LedgerAdmin>> openLedgerAdmin(std::string_view uri,
                                                     const LedgerOptions& options = {});

/// Makes a fresh random API key: "sk-trollllm-" + 64 lowercase hex digits.
std::string newApiKey();

} // namespace trollproxy
