// Small text helpers shared by the core and the proxy.
#pragma once

#include <string>
#include <string_view>

namespace trollproxy::internal {

/// `s` with ASCII letters lower-cased; other bytes unchanged (locale-independent).
std::string asciiLower(std::string_view s);

} // namespace trollproxy::internal
