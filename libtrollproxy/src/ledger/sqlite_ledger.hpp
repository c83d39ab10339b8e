// The embedded ledger: the production documents as SQLite tables, integer nano-USD.
#pragma once

#include <memory>
#include <string>

#include "ledger/backend.hpp"

namespace trollproxy::internal {

/// Opens (and creates, mode 0600) the ledger in a SQLite file, converting plain keys
/// an older version stored to digests. Several processes may share it.
/// `fullSync`: an fsync per commit (see ConnectionPool).
Result<std::unique_ptr<LedgerBackend>>
openSqliteLedger(const std::string& path, const LedgerOptions& options, bool fullSync = false);

} // namespace trollproxy::internal
