// A CreditLedger that hands every call to another one, for test ledgers that change a few.
#pragma once

#include <memory>
#include <utility>

#include "trollproxy/ledger.hpp"

namespace support {

/// Forwards every call to `real`. settleBatch() is left to CreditLedger's
/// default (one settle() per charge), so that a subclass's settle() sees the
/// charges of batches too.
class DelegatingLedger : public trollproxy::CreditLedger {
public:
    explicit DelegatingLedger(std::unique_ptr<trollproxy::CreditLedger> real)
        : real_(std::move(real)) {}

    trollproxy::AuthOutcome authenticate(std::string_view k) override {
        return real_->authenticate(k);
    }
    trollproxy::ReserveStatus reserve(const trollproxy::HoldRequest& h) override {
        return real_->reserve(h);
    }
    trollproxy::SliceGrant reserveSlice(const trollproxy::SliceRequest& r) override {
        return real_->reserveSlice(r);
    }
    trollproxy::SettleOutcome settle(const trollproxy::Charge& c) override {
        return real_->settle(c);
    }
    trollproxy::Result<void> release(std::string_view id) override { return real_->release(id); }
    trollproxy::Result<void> renewHold(std::string_view id, std::int64_t at) override {
        return real_->renewHold(id, at);
    }
    trollproxy::Result<std::int64_t> sweepExpiredHolds(std::int64_t now) override {
        return real_->sweepExpiredHolds(now);
    }
    trollproxy::Result<std::int64_t> releaseHolds(std::string_view prefix) override {
        return real_->releaseHolds(prefix);
    }
    trollproxy::Result<std::string> responseOwner(std::string_view id) override {
        return real_->responseOwner(id);
    }
    trollproxy::Result<void> recordRequest(const trollproxy::LogEntry& e) override {
        return real_->recordRequest(e);
    }
    bool ping() override { return real_->ping(); }

protected:
    trollproxy::CreditLedger& real() { return *real_; }

private:
    std::unique_ptr<trollproxy::CreditLedger> real_;
};

} // namespace support
