// The server's log lines: one JSON object per line on stderr.
#pragma once

#include <string>

namespace trollproxy::server {

/// Writes {"level":LEVEL,"msg":MSG} to stderr; `msg` is escaped, control
/// characters other than newline are dropped.
void logLine(const char* level, const std::string& msg);

} // namespace trollproxy::server
