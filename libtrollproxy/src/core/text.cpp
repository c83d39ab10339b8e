// Small text helpers shared by the core and the proxy.
#include "core/text.hpp"

namespace trollproxy::internal {

std::string asciiLower(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        if (c >= 'A' && c <= 'Z')
            c = static_cast<char>(c - 'A' + 'a');
    }
    return out;
}

} // namespace trollproxy::internal
