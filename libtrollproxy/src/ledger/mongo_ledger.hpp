// The MongoDB ledger: production's usersNew / user_keys / request_logs documents, unchanged.
#pragma once

#include <memory>
#include <string_view>

#include "ledger/backend.hpp"

namespace trollproxy::internal {

/// Opens the MongoDB ledger. The database is the URI's path, else
/// MONGODB_DB_NAME, else "fproxy". Connections are made lazily; a down
/// server shows as LedgerUnavailable within options.timeoutMs.
Result<std::unique_ptr<LedgerBackend>> openMongoLedger(std::string_view uri,
                                                       const LedgerOptions& options);

} // namespace trollproxy::internal
