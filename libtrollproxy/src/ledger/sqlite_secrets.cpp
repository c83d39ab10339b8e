// The SQLite ledger's file modes and key digests, including the one-time conversion
// of a database written by a trollproxy that stored keys in plain text.
#include "ledger/sqlite_secrets.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "core/sha256.hpp"
#include "ledger/sqlite_db.hpp"

namespace trollproxy::internal {

namespace {

constexpr std::int64_t kSchemaVersion = 2; // 2: client keys stored as SHA-256 digests

bool isDigest(std::string_view s) {
    return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

// SQL: trollproxy_sha256(text) -> 64 hex digits; NULL stays NULL.
void sqlSha256(sqlite3_context* ctx, int, sqlite3_value** argv) {
    if (sqlite3_value_type(argv[0]) == SQLITE_NULL) {
        sqlite3_result_null(ctx);
        return;
    }
    const unsigned char* t = sqlite3_value_text(argv[0]);
    int n = sqlite3_value_bytes(argv[0]);
    std::string d =
        sha256Hex(std::string_view(reinterpret_cast<const char*>(t), static_cast<std::size_t>(n)));
    sqlite3_result_text(ctx, d.data(), static_cast<int>(d.size()), SQLITE_TRANSIENT);
}

// Schema version (0: none recorded), or -1 when the query failed.
std::int64_t schemaVersion(Connection& c) {
    Stmt s = c.prepare("SELECT value FROM counters WHERE name = 'schemaVersion'");
    int rc = s.step();
    if (rc == SQLITE_ROW)
        return s.integer(0);
    return rc == SQLITE_DONE ? 0 : -1;
}

// 1 when a key column holds something that is not a digest (an older binary wrote
// it), 0 when not, -1 on error. request_logs is not scanned: it may be large.
int plainKeysLeft(Connection& c) {
    Stmt s = c.prepare(
        "SELECT EXISTS (SELECT 1 FROM usersNew WHERE apiKey IS NOT NULL AND "
        "(length(apiKey) != 64 OR apiKey GLOB '*[^0-9a-f]*')) OR "
        "EXISTS (SELECT 1 FROM user_keys WHERE length(id) != 64 OR id GLOB '*[^0-9a-f]*')");
    if (s.step() != SQLITE_ROW)
        return -1;
    return s.integer(0) ? 1 : 0;
}

Error failed(Connection& c, const char* what) {
    return Error{ErrorCode::Unavailable,
                 std::string("ledger database: ") + what + ": " + c.lastError()};
}

Result<void> convertKeys(Connection& c) {
    Transaction tx(c);
    if (!tx.began())
        return failed(c, "cannot convert the stored keys to digests");
    // Under the write lock: another process may have converted them meanwhile.
    std::int64_t version = schemaVersion(c);
    if (version < 0)
        return failed(c, "cannot read the schema version");
    if (sqlite3_create_function_v2(c.handle(), "trollproxy_sha256", 1,
                                   SQLITE_UTF8 | SQLITE_DETERMINISTIC, nullptr, sqlSha256, nullptr,
                                   nullptr, nullptr) != SQLITE_OK)
        return failed(c, "cannot register the digest function");
    // Without a version row every value is a plain key (even one that looks like a
    // digest); with one, only what an older binary wrote since is.
    std::int64_t all = version < kSchemaVersion ? 1 : 0;
    const char* steps[] = {
        "UPDATE usersNew SET apiKey = CASE WHEN apiKey = '' THEN NULL ELSE "
        "trollproxy_sha256(apiKey) END "
        "WHERE apiKey IS NOT NULL AND (?1 OR length(apiKey) != 64 OR apiKey GLOB '*[^0-9a-f]*')",
        "UPDATE user_keys SET id = trollproxy_sha256(id) WHERE ?1 OR length(id) != 64 OR id GLOB "
        "'*[^0-9a-f]*'",
        "UPDATE request_logs SET userKeyId = trollproxy_sha256(userKeyId) WHERE userKeyId IS NOT "
        "NULL AND "
        "userKeyId != '' AND (?1 OR length(userKeyId) != 64 OR userKeyId GLOB '*[^0-9a-f]*')",
    };
    for (const char* sql : steps) {
        Stmt s = c.prepare(sql);
        s.bind(1, all);
        if (s.step() != SQLITE_DONE)
            return failed(c, "cannot convert the stored keys to digests");
    }
    Stmt v = c.prepare("INSERT INTO counters (name, value) VALUES ('schemaVersion', ?) "
                       "ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)");
    v.bind(1, kSchemaVersion);
    if (v.step() != SQLITE_DONE || !tx.commit())
        return failed(c, "cannot convert the stored keys to digests");
    return {};
}

} // namespace

Result<void> makeDatabasePrivate(const std::string& path) {
    if (path.empty() || path == ":memory:")
        return {};
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0)
        ::close(fd); // an empty file is an empty database to SQLite
    else if (errno != EEXIST)
        return {}; // no such directory, no permission: SQLite's open says why
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
        std::string p = path + suffix;
        struct stat st {};
        if (::stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & 077) == 0)
            continue;
        if (::chmod(p.c_str(), 0600) != 0)
            return Error{ErrorCode::Unavailable,
                         "ledger database: " + p + " is open to group or others and " +
                             "cannot be made private (chmod 0600): " + std::strerror(errno)};
    }
    return {};
}

std::string keyDigest(std::string_view apiKey) {
    return sha256Hex(apiKey);
}

std::string storedKeyId(std::string_view keyId) {
    if (keyId.empty() || isDigest(keyId))
        return std::string(keyId);
    return sha256Hex(keyId);
}

Result<void> migrateKeysToDigests(Connection& c) {
    std::int64_t version = schemaVersion(c);
    if (version < 0)
        return failed(c, "cannot read the schema version");
    if (version >= kSchemaVersion) {
        int left = plainKeysLeft(c);
        if (left < 0)
            return failed(c, "cannot check the stored keys");
        if (left == 0)
            return {};
    }
    // secure_delete: the plain keys' old bytes are zeroed, not left in free space.
    std::int64_t secureDelete = 0;
    {
        Stmt s = c.prepare("PRAGMA secure_delete");
        if (s.step() == SQLITE_ROW)
            secureDelete = s.integer(0);
    }
    c.exec("PRAGMA secure_delete = ON");
    Result<void> r = convertKeys(c);
    c.exec(secureDelete ? "PRAGMA secure_delete = ON" : "PRAGMA secure_delete = OFF");
    if (r) {
        // Copies the converted pages over the old ones in the database file and empties
        // the WAL, unless another process is reading (then its next checkpoint does).
        sqlite3_wal_checkpoint_v2(c.handle(), nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr,
                                  nullptr);
    }
    return r;
}

} // namespace trollproxy::internal
