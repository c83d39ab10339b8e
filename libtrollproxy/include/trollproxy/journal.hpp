// ChargeJournal: an append-only, fsync'd file of charges the ledger could not take yet.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "trollproxy/ledger.hpp"
#include "trollproxy/result.hpp"

namespace trollproxy {

/// Counts from one replay.
struct ReplayReport {
    std::int64_t applied = 0;        ///< settled now
    std::int64_t alreadySettled = 0; ///< settled before (a duplicate line or a retry)
    std::int64_t pending = 0;        ///< still unavailable; kept in the journal
    std::int64_t corrupt = 0;        ///< unreadable lines (torn by a crash mid-write), dropped
};

/// Charges are appended (one line each, fsync'd before append() returns) and
/// replayed into a ledger; settle's idempotency by request id makes a replay
/// exactly-once. Thread-safe.
class ChargeJournal {
public:
    explicit ChargeJournal(std::string path);

    const std::string& path() const { return path_; }

    /// Appends one charge durably.
    Result<void> append(const Charge& charge);

    /// Number of charges waiting.
    std::int64_t pendingCount();

    /// Settles every journalled charge; rewrites the file with what is still
    /// pending (atomically, by rename).
    Result<ReplayReport> replay(CreditLedger& ledger);

private:
    std::string path_;
    std::mutex mutex_;
    std::int64_t pending_ = 0;
};

/// Encodes a charge as one line of JSON (no newline), and back.
std::string encodeCharge(const Charge& charge);
Result<Charge> decodeCharge(std::string_view line);

} // namespace trollproxy
