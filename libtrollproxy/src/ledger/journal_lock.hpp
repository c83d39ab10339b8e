// JournalLock: one process per journal path, which is the instance's identity.
#pragma once

#include <string>

#include "trollproxy/result.hpp"

namespace trollproxy::internal {

/// An exclusive lock on `<journal>.lock`, held for the service's life (and by
/// a replay by hand while it runs).
///
/// The journal path names the instance: its request ids, its holds and slices
/// in the ledger, and the charges its journal replays. A second process on the
/// same path would give back the first one's holds at its start, settle and
/// rewrite the first one's journal lines, and draw on its slices. The kernel
/// drops the lock when the process dies (kill -9 too), so a restart takes it
/// at once. Move-only.
class JournalLock {
public:
    /// Takes the lock; Conflict (with the holder's pid) when another process
    /// or service holds it, Unavailable when the file cannot be opened.
    static Result<JournalLock> acquire(const std::string& journalPath);

    JournalLock(JournalLock&& other) noexcept;
    JournalLock& operator=(JournalLock&& other) noexcept;
    JournalLock(const JournalLock&) = delete;
    JournalLock& operator=(const JournalLock&) = delete;
    ~JournalLock();

private:
    explicit JournalLock(int fd) : fd_(fd) {}
    int fd_ = -1;
};

} // namespace trollproxy::internal
