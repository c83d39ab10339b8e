// SHA-256 against the FIPS 180-2 vectors, padding boundaries and split input.
#include <doctest/doctest.h>

#include <string>

#include "core/sha256.hpp"

using trollproxy::internal::Sha256;
using trollproxy::internal::sha256Hex;

namespace {

std::string hex(const Sha256::Digest& d) {
    static const char kHex[] = "0123456789abcdef";
    std::string out;
    for (auto b : d) {
        out += kHex[b >> 4];
        out += kHex[b & 15];
    }
    return out;
}

} // namespace

TEST_CASE("sha256: FIPS 180-2 vectors") {
    CHECK(sha256Hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(sha256Hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    CHECK(sha256Hex(std::string(1'000'000, 'a')) ==
          "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("sha256: lengths around the padding boundary (values from Python's hashlib)") {
    CHECK(sha256Hex(std::string(55, 'x')) ==
          "d5e285683cd4efc02d021a5c62014694958901005d6f71e89e0989fac77e4072");
    CHECK(sha256Hex(std::string(56, 'x')) ==
          "04c26261370ee7541549d16dee320c723e3fd14671e66a099afe0a377c16888e");
    CHECK(sha256Hex(std::string(63, 'x')) ==
          "75220b47218278e656f2013bb8f0c455a25eaf01e86c64924e9d48d89776d6f2");
    CHECK(sha256Hex(std::string(64, 'x')) ==
          "7ce100971f64e7001e8fe5a51973ecdfe1ced42befe7ee8d5fd6219506b5393c");
    CHECK(sha256Hex(std::string(119, 'x')) ==
          "000b48d4edf0fa7bee3c6236ecd2785baa5db4eeb8bb54341b029e0d9fa5fb0c");
}

TEST_CASE("sha256: input split at any points gives the same digest") {
    std::string msg(1'000, '\0');
    for (std::size_t i = 0; i < msg.size(); ++i)
        msg[i] = static_cast<char>(i * 131 + 7);
    std::string whole = sha256Hex(msg);
    for (std::size_t step : {1, 3, 63, 64, 65, 200}) {
        Sha256 s;
        for (std::size_t i = 0; i < msg.size(); i += step)
            s.update(std::string_view(msg).substr(i, step));
        INFO("step ", step);
        CHECK(hex(s.finish()) == whole);
    }
}
