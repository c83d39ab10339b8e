// Helpers shared by the ledger tests: temporary files, unique names, amounts.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>
#include <unistd.h>

#include "trollproxy/ledger.hpp"

namespace trollproxy::test {

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
