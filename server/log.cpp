// The server's log lines: one JSON object per line on stderr.
#include "log.hpp"

#include <cstdio>

namespace trollproxy::server {

namespace {

std::string jsonEscape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\')
            out += '\\';
        if (c == '\n')
            out += "\\n";
        else if (static_cast<unsigned char>(c) >= 0x20)
            out += c;
    }
    return out;
}

} // namespace

void logLine(const char* level, const std::string& msg) {
    std::fprintf(stderr, "{\"level\":\"%s\",\"msg\":\"%s\"}\n", level, jsonEscape(msg).c_str());
}

} // namespace trollproxy::server
