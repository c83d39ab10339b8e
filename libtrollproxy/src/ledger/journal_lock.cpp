// JournalLock: flock(2) on a file beside the journal, with the holder's pid in it.
#include "ledger/journal_lock.hpp"

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

namespace trollproxy::internal {

namespace {

// The pid the holder wrote, or "" when it cannot be read.
std::string holderPid(int fd) {
    char buf[32] = {};
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    std::string pid(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' '))
        pid.pop_back();
    return pid;
}

} // namespace

Result<JournalLock> JournalLock::acquire(const std::string& journalPath) {
    const std::string path = journalPath + ".lock";
    // Not the journal itself: it is replaced by a rename when it is compacted,
    // which would leave a lock on the old file.
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return Error{ErrorCode::Unavailable, "journal_path " + journalPath + ": cannot open " +
                                                 path + ": " + std::strerror(errno)};
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        std::string pid = holderPid(fd);
        ::close(fd);
        if (err != EWOULDBLOCK)
            return Error{ErrorCode::Unavailable, "journal_path " + journalPath + ": cannot lock " +
                                                     path + ": " + std::strerror(err)};
        return Error{ErrorCode::Conflict, "journal_path " + journalPath +
                                              " is in use by another process" +
                                              (pid.empty() ? std::string() : " (pid " + pid + ")")};
    }
    // The pid is only for the message above (a failed write is harmless);
    // the lock is what counts.
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd, 0) == 0)
        (void)!::pwrite(fd, pid.data(), pid.size(), 0);
    return JournalLock(fd);
}

JournalLock::JournalLock(JournalLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

JournalLock& JournalLock::operator=(JournalLock&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
}

JournalLock::~JournalLock() {
    if (fd_ >= 0)
        ::close(fd_); // the lock goes with the descriptor; the file stays
}

} // namespace trollproxy::internal
