// Helpers shared by the ledger tests: both roles of a ledger, temporary files, unique names,
// amounts.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <unistd.h>

#include "trollproxy/ledger.hpp"
#include "trollproxy/ledger_admin.hpp"

namespace trollproxy::test {

/// One ledger URI opened in both roles, openLedger() and openLedgerAdmin(), so a
/// test can charge and inspect through one pointer. Each call goes to the object
/// of its role (two connection pools on one database, as a server and
/// trollproxy-admin have).
class BothRoles final : public CreditLedger, public LedgerAdmin {
public:
    static Result<std::unique_ptr<BothRoles>> open(std::string_view uri,
                                                   const LedgerOptions& options = {}) {
        auto ledger = openLedger(uri, options);
        if (!ledger)
            return ledger.error();
        auto admin = openLedgerAdmin(uri, options);
        if (!admin)
            return admin.error();
        return std::unique_ptr<BothRoles>(new BothRoles(std::move(*ledger), std::move(*admin)));
    }

    AuthOutcome authenticate(std::string_view k) override { return ledger_->authenticate(k); }
    ReserveStatus reserve(const HoldRequest& h) override { return ledger_->reserve(h); }
    SettleOutcome settle(const Charge& c) override { return ledger_->settle(c); }
    Result<void> release(std::string_view id) override { return ledger_->release(id); }
    Result<void> renewHold(std::string_view id, std::int64_t ms) override {
        return ledger_->renewHold(id, ms);
    }
    Result<std::int64_t> sweepExpiredHolds(std::int64_t ms) override {
        return ledger_->sweepExpiredHolds(ms);
    }
    Result<std::int64_t> releaseHolds(std::string_view prefix) override {
        return ledger_->releaseHolds(prefix);
    }
    Result<std::string> responseOwner(std::string_view id) override {
        return ledger_->responseOwner(id);
    }
    Result<void> recordRequest(const LogEntry& e) override { return ledger_->recordRequest(e); }
    bool ping() override { return ledger_->ping(); }

    Result<void> addUser(std::string_view n) override { return admin_->addUser(n); }
    Result<std::string> addKey(std::string_view n) override { return admin_->addKey(n); }
    Result<void> revokeKey(std::string_view k) override { return admin_->revokeKey(k); }
    Result<void> credit(std::string_view n, BalanceField f, Money m) override {
        return admin_->credit(n, f, m);
    }
    Result<Balance> balance(std::string_view n) override { return admin_->balance(n); }
    Result<std::vector<LogEntry>> usage(std::string_view n, std::int64_t last) override {
        return admin_->usage(n, last);
    }
    Result<Money> totalShortfall() override { return admin_->totalShortfall(); }

private:
    BothRoles(std::unique_ptr<CreditLedger> ledger, std::unique_ptr<LedgerAdmin> admin)
        : ledger_(std::move(ledger)), admin_(std::move(admin)) {}

    std::unique_ptr<CreditLedger> ledger_;
    std::unique_ptr<LedgerAdmin> admin_;
};

/// A fresh empty directory under $TMPDIR, removed with its files when it goes away.
class TempDir {
public:
    TempDir() {
        const char* base = std::getenv("TMPDIR");
        std::string tmpl = std::string(base && *base ? base : "/tmp") + "/trollproxy-ledger-XXXXXX";
        if (mkdtemp(tmpl.data()))
            path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        if (!path_.empty())
            std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

/// A name no other test case (or run) uses, since a MongoDB database is shared.
inline std::string uniqueName(const std::string& stem) {
    return stem + "-" + newApiKey().substr(12, 10);
}

/// USD text to Money; the tests only pass valid literals.
inline Money usd(const char* text) {
    auto m = Money::parse(text);
    return m ? *m : Money{-1};
}

} // namespace trollproxy::test
