// The charge journal: one JSON line per charge, fsync'd; replayed exactly once by request id.
#include "trollproxy/journal.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <sys/stat.h>
#include <unistd.h>

#include <simdjson.h>

#include "core/json_locate.hpp"
#include "core/json_writer.hpp"
#include "ledger/journal_file.hpp"
#include "ledger/journal_lock.hpp"

namespace trollproxy {

using internal::readLines;
using internal::syncDirectoryOf;
using internal::writeAll;

std::string encodeCharge(const Charge& c) {
    using internal::jsonQuote;
    std::string o;
    o.reserve(512);
    auto num = [&o](const char* key, std::int64_t v) {
        o += key;
        o += std::to_string(v);
    };
    auto flag = [&o](const char* key, bool v) {
        o += key;
        o += v ? "true" : "false";
    };
    o += "{\"requestId\":" + jsonQuote(c.requestId) + ",\"userId\":" + jsonQuote(c.userId) +
         ",\"keyId\":" + jsonQuote(c.keyId) + ",\"model\":" + jsonQuote(c.model) + ",\"pool\":\"" +
         poolName(c.pool) + "\"";
    num(",\"input\":", c.usage.uncachedInput);
    num(",\"cacheWrite\":", c.usage.cacheWrite);
    num(",\"cacheRead\":", c.usage.cacheRead);
    num(",\"output\":", c.usage.output);
    flag(",\"estimated\":", c.usage.estimated);
    num(",\"costNanos\":", c.cost.nanos);
    num(",\"statusCode\":", c.statusCode);
    num(",\"latencyMs\":", c.latencyMs);
    flag(",\"success\":", c.success);
    num(",\"createdAtMs\":", c.createdAtMs);
    if (c.usage.cacheWrite1h > 0)
        num(",\"cacheWrite1h\":", c.usage.cacheWrite1h);
    if (!c.responseId.empty())
        o += ",\"responseId\":" + jsonQuote(c.responseId);
    if (!c.holdId.empty()) {
        o += ",\"holdId\":" + jsonQuote(c.holdId);
        num(",\"holdShareNanos\":", c.holdShare.nanos);
    }
    o += "}";
    return o;
}

Result<Charge> decodeCharge(std::string_view line) {
    simdjson::dom::parser parser;
    simdjson::dom::element d;
    if (parser.parse(line.data(), line.size(), true).get(d))
        return Error{ErrorCode::ParseError, "journal line is not valid JSON"};
    Charge c;
    std::string_view s, pool;
    bool est = false, ok = false;
    if (d["requestId"].get_string().get(s) || s.empty())
        return Error{ErrorCode::ParseError, "journal line has no requestId"};
    c.requestId = s;
    auto str = [&](const char* k, std::string& out) {
        std::string_view v;
        if (d[k].get_string().get(v))
            return false;
        out = v;
        return true;
    };
    auto num = [&](const char* k, std::int64_t& out) { return !d[k].get_int64().get(out); };
    std::int64_t status = 0;
    if (!str("userId", c.userId) || !str("keyId", c.keyId) || !str("model", c.model) ||
        d["pool"].get_string().get(pool) || !num("input", c.usage.uncachedInput) ||
        !num("cacheWrite", c.usage.cacheWrite) || !num("cacheRead", c.usage.cacheRead) ||
        !num("output", c.usage.output) || d["estimated"].get_bool().get(est) ||
        !num("costNanos", c.cost.nanos) || !num("statusCode", status) ||
        !num("latencyMs", c.latencyMs) || d["success"].get_bool().get(ok) ||
        !num("createdAtMs", c.createdAtMs))
        return Error{ErrorCode::ParseError, "journal line is missing a field"};
    (void)num("cacheWrite1h", c.usage.cacheWrite1h); // optional: older lines have none
    (void)str("responseId", c.responseId);           // optional
    if (str("holdId", c.holdId) && !num("holdShareNanos", c.holdShare.nanos))
        return Error{ErrorCode::ParseError, "journal line has a holdId without holdShareNanos"};
    c.pool = pool == "credits" ? Pool::Credits : Pool::CreditsNew;
    c.usage.estimated = est;
    c.success = ok;
    c.statusCode = static_cast<int>(status);
    return c;
}

ChargeJournal::ChargeJournal(std::string path) : path_(std::move(path)) {
    pending_ = static_cast<std::int64_t>(readLines(path_).size());
}

Result<void> ChargeJournal::append(const Charge& charge) {
    std::string line = encodeCharge(charge) + "\n";
    std::lock_guard lock(mutex_);
    int fd = ::open(path_.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return Error{ErrorCode::Unavailable,
                     "cannot open journal " + path_ + ": " + std::strerror(errno)};
    // After a crash mid-write the file ends in a torn line; start on a fresh
    // line so this charge is not glued to it and lost with it.
    struct stat st {};
    char last = '\n';
    if (::fstat(fd, &st) == 0 && st.st_size > 0 && ::pread(fd, &last, 1, st.st_size - 1) == 1 &&
        last != '\n')
        line.insert(line.begin(), '\n');
    bool ok = writeAll(fd, line) && ::fsync(fd) == 0;
    ::close(fd);
    if (!ok)
        return Error{ErrorCode::Unavailable,
                     "cannot write journal " + path_ + ": " + std::strerror(errno)};
    ++pending_;
    return {};
}

std::int64_t ChargeJournal::pendingCount() {
    std::lock_guard lock(mutex_);
    return pending_;
}

Result<ReplayReport> ChargeJournal::replay(CreditLedger& ledger) {
    std::lock_guard lock(mutex_);
    ReplayReport rep;
    if (::access(path_.c_str(), F_OK) != 0)
        return rep; // nothing journalled
    // Not while the process that owns the journal runs: it settles the
    // journal itself, and a rewrite here would drop what it appends meanwhile.
    auto owner = internal::JournalLock::acquire(path_);
    if (!owner)
        return Error{owner.error().code, owner.error().message +
                                             ", which settles it itself: stop it to replay "
                                             "this journal by hand"};
    std::vector<std::string> keep;
    bool down = false;
    for (const std::string& line : readLines(path_)) {
        if (down) {
            // Each try would wait for the ledger's timeout: keep the rest for later.
            keep.push_back(line);
            continue;
        }
        auto charge = decodeCharge(line);
        if (!charge) {
            // A line torn by a crash mid-write: its charge never counted as written.
            ++rep.corrupt;
            continue;
        }
        SettleOutcome out = ledger.settle(*charge);
        if (out.status == SettleStatus::Settled)
            ++rep.applied;
        else if (out.status == SettleStatus::AlreadySettled)
            ++rep.alreadySettled;
        else {
            keep.push_back(line);
            down = true;
        }
    }
    rep.pending = static_cast<std::int64_t>(keep.size());
    if (keep.empty()) {
        if (::unlink(path_.c_str()) != 0 && errno != ENOENT)
            return Error{ErrorCode::Internal, "cannot remove journal " + path_};
    } else {
        std::string tmp = path_ + ".tmp";
        int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
            return Error{ErrorCode::Unavailable, "cannot write " + tmp};
        bool ok = true;
        for (const auto& l : keep)
            ok = ok && writeAll(fd, l + "\n");
        ok = ok && ::fsync(fd) == 0;
        ::close(fd);
        if (!ok || ::rename(tmp.c_str(), path_.c_str()) != 0)
            return Error{ErrorCode::Unavailable, "cannot rewrite journal " + path_};
    }
    syncDirectoryOf(path_);
    pending_ = rep.pending;
    return rep;
}

} // namespace trollproxy
