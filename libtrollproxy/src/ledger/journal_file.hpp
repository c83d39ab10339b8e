// The journal file's plumbing, shared by ChargeJournal and the proxy's SettlementQueue.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace trollproxy::internal {

/// Writes all of `bytes` to `fd` (retrying short writes and EINTR).
bool writeAll(int fd, std::string_view bytes);

/// The file's non-empty lines; none when it does not exist.
std::vector<std::string> readLines(const std::string& path);

/// fsyncs the directory holding `path`, so a rename or unlink in it is durable.
void syncDirectoryOf(const std::string& path);

} // namespace trollproxy::internal
