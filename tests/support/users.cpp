// Test users through the ledger's administration.
#include "users.hpp"

#include <stdexcept>

namespace support {

using trollproxy::BalanceField;
using trollproxy::Money;

std::unique_ptr<trollproxy::LedgerAdmin> openAdmin(const std::string& uri) {
    auto opened = trollproxy::openLedgerAdmin(uri);
    if (!opened)
        throw std::runtime_error(opened.error().message);
    return std::move(*opened);
}

std::string addUserWithKey(trollproxy::LedgerAdmin& ledger, const std::string& name,
                           std::initializer_list<std::pair<BalanceField, Money>> credits) {
    if (auto r = ledger.addUser(name); !r)
        throw std::runtime_error(r.error().message);
    auto key = ledger.addKey(name);
    if (!key)
        throw std::runtime_error(key.error().message);
    for (auto [field, amount] : credits) {
        if (auto r = ledger.credit(name, field, amount); !r)
            throw std::runtime_error(r.error().message);
    }
    return *key;
}

std::string addUserWithKey(trollproxy::LedgerAdmin& ledger, const std::string& name,
                           const std::string& credits, const std::string& refCredits,
                           const std::string& creditsNew) {
    return addUserWithKey(ledger, name,
                          {{BalanceField::Credits, usd(credits)},
                           {BalanceField::RefCredits, usd(refCredits)},
                           {BalanceField::CreditsNew, usd(creditsNew)}});
}

trollproxy::Balance balanceOf(trollproxy::LedgerAdmin& ledger, const std::string& name) {
    auto b = ledger.balance(name);
    if (!b)
        throw std::runtime_error(b.error().message);
    return *b;
}

Money usd(const std::string& text) {
    auto m = Money::parse(text);
    if (!m)
        throw std::runtime_error("not an amount: " + text);
    return *m;
}

} // namespace support
