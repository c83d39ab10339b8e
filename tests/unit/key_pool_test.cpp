// Tests of proxy/key_pool: rotation, cool-down and set-aside of upstream keys, with an injected
// clock.
#include <doctest/doctest.h>

#include "proxy/key_pool.hpp"

using namespace trollproxy::internal;

TEST_CASE("key pool: rotation, cool-down and set-aside") {
    KeyPool pool({"k0", "k1", "k2"});
    auto first = pool.usable(0);
    CHECK(first == std::vector<std::size_t>{0, 1, 2});
    CHECK(pool.usable(0) == std::vector<std::size_t>{1, 2, 0});
    pool.coolDown(1, 5000);
    CHECK(pool.state(1, 100) == KeyPool::State::CoolingDown);
    CHECK(pool.usable(100) == std::vector<std::size_t>{2, 0});
    pool.setAside(2, 10'000);
    CHECK(pool.state(2, 100) == KeyPool::State::SetAside);
    CHECK(pool.soonestMs(100) == 4900);
    CHECK(pool.usable(6000) == std::vector<std::size_t>{0, 1});
    CHECK(pool.state(2, 10'000) == KeyPool::State::Active);
}

TEST_CASE("key pool: a cool-down never shortens an earlier one") {
    KeyPool pool({"k0", "k1"});
    pool.coolDown(0, 9000);
    pool.coolDown(0, 2000);
    CHECK(pool.state(0, 5000) == KeyPool::State::CoolingDown);
    CHECK(pool.soonestMs(5000) == 4000);
    CHECK(pool.state(0, 9000) == KeyPool::State::Active);
    CHECK(pool.soonestMs(9000) == 0);
}

TEST_CASE("key pool: set-aside replaces a cool-down, and a later cool-down clears the mark") {
    KeyPool pool({"k0"});
    pool.coolDown(0, 9000);
    pool.setAside(0, 3000); // the set-aside's own deadline, shorter or not
    CHECK(pool.state(0, 1000) == KeyPool::State::SetAside);
    CHECK(pool.state(0, 3000) == KeyPool::State::Active);
    pool.coolDown(0, 4000);
    CHECK(pool.state(0, 3500) == KeyPool::State::CoolingDown);
}

TEST_CASE("key pool: keys, size, and an empty pool") {
    KeyPool pool({"sk-a", "sk-b"});
    CHECK(pool.size() == 2);
    CHECK(pool.key(1) == "sk-b");
    KeyPool empty({});
    CHECK(empty.size() == 0);
    CHECK(empty.usable(0).empty());
    CHECK(empty.soonestMs(0) == 0);
}

TEST_CASE("key pool: every key busy means nothing usable until the soonest comes back") {
    KeyPool pool({"k0", "k1"});
    pool.coolDown(0, 700);
    pool.setAside(1, 400);
    CHECK(pool.usable(100).empty());
    CHECK(pool.soonestMs(100) == 300);
    CHECK(pool.usable(400) == std::vector<std::size_t>{1});
}
