// What the SQLite ledger does to keep secrets: a file only its owner can read, and
// client keys stored as SHA-256 digests, never in plain text.
#pragma once

#include <string>
#include <string_view>

#include "trollproxy/result.hpp"

namespace trollproxy::internal {

class Connection;

/// Creates the database file with mode 0600 when it does not exist yet (SQLite then
/// gives its -wal and -shm files the same mode), and narrows an existing database,
/// -wal, -shm or -journal file that group or others may access to 0600.
Result<void> makeDatabasePrivate(const std::string& path);

/// What the ledger stores for a client key: its SHA-256, 64 lowercase hex digits.
std::string keyDigest(std::string_view apiKey);

/// A key id on its way into the file: a digest stays as it is, anything else (an
/// older caller's plain key) is hashed; "" stays "".
std::string storedKeyId(std::string_view keyId);

/// Converts plain keys left by an older trollproxy (`usersNew.apiKey`,
/// `user_keys.id`, `request_logs.userKeyId`) to digests, in one transaction, and
/// records `counters.schemaVersion` = 2. Cheap when there is nothing to convert.
Result<void> migrateKeysToDigests(Connection& c);

} // namespace trollproxy::internal
