// A 128-bit integer for exact intermediate money arithmetic (GCC and Clang).
#pragma once

namespace trollproxy::internal {

__extension__ typedef __int128 Int128;

} // namespace trollproxy::internal
