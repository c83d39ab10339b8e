// Pool and BalanceField: which credits pay for a model, and which balance an administrator tops up.
#pragma once

#include <string_view>

#include "trollproxy/result.hpp"

namespace trollproxy {

/// Which credit pool pays for a model (`billing_upstream`).
enum class Pool {
    Credits,    ///< billing_upstream "ohmygpt": `credits`, then `refCredits`
    CreditsNew, ///< billing_upstream "openhands": `creditsNew` only
};

/// "credits" or "creditsNew".
const char* poolName(Pool pool) noexcept;
/// The request log's `creditType`: "ohmygpt" or "openhands".
const char* poolCreditType(Pool pool) noexcept;

/// A balance field that LedgerAdmin::credit() adds to. Pool::Credits draws on
/// two of them (Credits, then RefCredits), so the fields are not the pools.
enum class BalanceField { Credits, RefCredits, CreditsNew };

/// "credits", "refCredits" or "creditsNew".
const char* balanceFieldName(BalanceField field) noexcept;
/// Reads a field name as balanceFieldName() writes it; InvalidArgument otherwise.
Result<BalanceField> parseBalanceField(std::string_view name);
/// The field a deposit for `pool` goes to: Credits or CreditsNew.
BalanceField depositField(Pool pool) noexcept;

} // namespace trollproxy
