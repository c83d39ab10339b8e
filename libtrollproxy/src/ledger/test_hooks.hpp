// A hook a test binary sets to act at named points inside the ledger (e.g. die mid-settlement).
#pragma once

#include <string_view>

namespace trollproxy::internal {

/// Called with the name of the point reached, e.g. "mongo-crash-after-charge".
using LedgerHook = void (*)(std::string_view point);

/// Installs the hook; nullptr (the default) removes it. For test binaries only.
void setLedgerTestHook(LedgerHook hook);

/// Passes `point` to the hook, when one is set.
void ledgerTestPoint(std::string_view point);

} // namespace trollproxy::internal
