// LedgerBackend: what each ledger backend implements, both roles over one connection pool.
#pragma once

#include <memory>
#include <string_view>

#include "trollproxy/ledger.hpp"
#include "trollproxy/ledger_admin.hpp"

namespace trollproxy::internal {

/// One backend object serves the request path and administration;
/// openLedger() and openLedgerAdmin() each hand out one role of a fresh one.
class LedgerBackend : public CreditLedger, public LedgerAdmin {};

/// Opens the backend a ledger URI names (see openLedger()).
Result<std::unique_ptr<LedgerBackend>> openLedgerBackend(std::string_view uri,
                                                         const LedgerOptions& options);

} // namespace trollproxy::internal
