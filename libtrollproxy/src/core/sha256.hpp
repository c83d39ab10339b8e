// SHA-256 (FIPS 180-4), self-contained: the SQLite ledger stores client keys as digests.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace trollproxy::internal {

/// An incremental SHA-256: update() any number of times, then finish() once.
class Sha256 {
public:
    using Digest = std::array<std::uint8_t, 32>;

    Sha256();
    void update(std::string_view data);
    Digest finish();

private:
    void block(const std::uint8_t* p);

    std::array<std::uint32_t, 8> h_;
    std::array<std::uint8_t, 64> buf_{};
    std::size_t used_ = 0;    ///< bytes waiting in buf_
    std::uint64_t total_ = 0; ///< message length in bytes
};

/// The SHA-256 of `data`, as 64 lowercase hex digits.
std::string sha256Hex(std::string_view data);

} // namespace trollproxy::internal
