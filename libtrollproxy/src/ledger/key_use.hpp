// KeyUse: what settled charges add to a key's statistics, for every ledger backend.
#pragma once

#include <cstdint>

#include "trollproxy/ledger.hpp"

namespace trollproxy::internal {

/// Tokens and requests are added; lastUsedAt is the last charge's, as when
/// the charges are counted one by one in settlement order.
struct KeyUse {
    std::int64_t tokens = 0;
    std::int64_t requests = 0;
    std::int64_t lastUsedAt = 0;

    void add(const Charge& ch) {
        tokens += ch.usage.totalInput() + ch.usage.output;
        ++requests;
        lastUsedAt = ch.createdAtMs;
    }
};

} // namespace trollproxy::internal
