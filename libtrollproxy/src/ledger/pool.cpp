// Names of the credit pools and balance fields, as the production documents spell them.
#include "trollproxy/pool.hpp"

#include <string>

namespace trollproxy {

const char* poolName(Pool pool) noexcept {
    return pool == Pool::Credits ? "credits" : "creditsNew";
}

const char* poolCreditType(Pool pool) noexcept {
    return pool == Pool::Credits ? "ohmygpt" : "openhands";
}

const char* balanceFieldName(BalanceField field) noexcept {
    switch (field) {
    case BalanceField::Credits:
        return "credits";
    case BalanceField::RefCredits:
        return "refCredits";
    case BalanceField::CreditsNew:
        return "creditsNew";
    }
    return "?";
}

Result<BalanceField> parseBalanceField(std::string_view name) {
    for (BalanceField f :
         {BalanceField::Credits, BalanceField::RefCredits, BalanceField::CreditsNew}) {
        if (name == balanceFieldName(f))
            return f;
    }
    return Error{ErrorCode::InvalidArgument, "unknown pool \"" + std::string(name) +
                                                 "\" (one of credits, refCredits, creditsNew)"};
}

BalanceField depositField(Pool pool) noexcept {
    return pool == Pool::Credits ? BalanceField::Credits : BalanceField::CreditsNew;
}

} // namespace trollproxy
