// Test users: a ledger user with a key and credits, through the ledger's administration.
#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <utility>

#include "trollproxy/ledger_admin.hpp"

namespace support {

/// openLedgerAdmin(uri), or throws std::runtime_error with the ledger's message.
std::unique_ptr<trollproxy::LedgerAdmin> openAdmin(const std::string& uri);

/// Creates `name` with a new key and credits each (field, amount) given, in
/// order; returns the key. Throws std::runtime_error with the ledger's message.
std::string addUserWithKey(
    trollproxy::LedgerAdmin& ledger, const std::string& name,
    std::initializer_list<std::pair<trollproxy::BalanceField, trollproxy::Money>> credits);

/// The same with USD text for each pool: credits, refCredits and creditsNew
/// are all credited (zero amounts too).
std::string addUserWithKey(trollproxy::LedgerAdmin& ledger, const std::string& name,
                           const std::string& credits, const std::string& refCredits,
                           const std::string& creditsNew);

/// The user's balance; throws std::runtime_error with the ledger's message.
trollproxy::Balance balanceOf(trollproxy::LedgerAdmin& ledger, const std::string& name);

/// Money::parse(usd); throws std::runtime_error when it is not an amount.
trollproxy::Money usd(const std::string& text);

} // namespace support
