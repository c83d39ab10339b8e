// Compiles the umbrella header with only the library's own include path.
#include <trollproxy/trollproxy.hpp>

#include <doctest/doctest.h>

TEST_CASE("the umbrella header is self-contained") {
    trollproxy::Money m = trollproxy::Money::fromNanos(5);
    CHECK(m.toString() == "0.000000005");
}
