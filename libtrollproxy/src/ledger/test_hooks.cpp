// The ledger's test hook: one atomic pointer, null unless a test binary set it.
#include "ledger/test_hooks.hpp"

#include <atomic>

namespace trollproxy::internal {

namespace {
std::atomic<LedgerHook> hook{nullptr};
} // namespace

void setLedgerTestHook(LedgerHook h) {
    hook.store(h);
}

void ledgerTestPoint(std::string_view point) {
    if (LedgerHook h = hook.load(std::memory_order_relaxed))
        h(point);
}

} // namespace trollproxy::internal
