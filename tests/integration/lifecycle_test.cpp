// Config reload on SIGHUP and graceful shutdown on SIGTERM.
#include <csignal>
#include <sys/wait.h>
#include <thread>

#include <doctest/doctest.h>

#include "harness.hpp"

using namespace harness;

namespace {

std::string config(const std::string& models) {
    return R"({"port": 8000, "endpoints": [{"name": "ant", "base_url": "UPSTREAM/v1/messages"}],
               "models": [)" +
           models +
           R"(], "trollproxy": {"forward_headers": ["x-fake-*"], "shutdown_grace_seconds": 20}})";
}
const char* kModelA = R"({"id": "a", "billing_upstream": "openhands", "output_price_per_mtok": 1})";
const char* kModelB = R"({"id": "b", "billing_upstream": "openhands", "output_price_per_mtok": 1})";

std::string body(const char* model, bool stream = false) {
    return std::string(R"({"model":")") + model + R"(","max_tokens":1000000,"messages":[])" +
           (stream ? R"(,"stream":true})" : "}");
}

} // namespace

TEST_CASE("SIGHUP reloads the config; a bad config is refused and the old one kept") {
    Stack s(config(kModelA));
    std::string key = s.userWithKey("u", "0", "0", "10");
    std::map<std::string, std::string> h{{"x-api-key", key}};
    CHECK(post(s.proxy->port(), "/v1/messages", body("a"), h).status == 200);
    CHECK(post(s.proxy->port(), "/v1/messages", body("b"), h).status == 404);

    std::string cfg = config(std::string(kModelA) + "," + kModelB);
    std::string base = "http://127.0.0.1:" + std::to_string(s.upstream->port());
    cfg.replace(cfg.find("UPSTREAM"), 8, base);
    writeFile(s.dir + "/config.json", cfg);
    s.proxy->signal(SIGHUP, false);
    int status = 0;
    for (int i = 0; i < 50 && status != 200; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        status = post(s.proxy->port(), "/v1/messages", body("b"), h).status;
    }
    CHECK(status == 200);

    writeFile(s.dir + "/config.json", "{ not json");
    s.proxy->signal(SIGHUP, false);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    CHECK(s.proxy->running());
    CHECK(post(s.proxy->port(), "/v1/messages", body("b"), h).status == 200);
}

TEST_CASE("SIGTERM lets a running stream finish and settles it before exiting") {
    Stack s(config(kModelA));
    std::string key = s.userWithKey("u", "0", "0", "10");
    RawResponse streamed;
    std::thread client([&] {
        streamed = post(s.proxy->port(), "/v1/messages", body("a", true),
                        {{"x-api-key", key},
                         {"x-fake-chunks", "10"},
                         {"x-fake-chunk-delay-ms", "150"},
                         {"x-fake-usage", "0,1000000,0,0"}});
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    int status = s.proxy->signal(SIGTERM, true);
    client.join();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(streamed.status == 200);
    CHECK(streamed.body.find("message_stop") != std::string::npos);
    // 1M output tokens at $1/Mtok.
    CHECK(s.balance("u").creditsNew == *trollproxy::Money::parse("9"));
}

TEST_CASE("SIGHUP with a key file keeps a cooling-down key cooling (the pool's state survives the "
          "reload)") {
    std::string keysDir = tempDir();
    writeFile(keysDir + "/keys", "k1\nk2\n");
    std::string cfg = config(kModelA);
    cfg.replace(cfg.find("\"shutdown_grace_seconds\""), 0,
                "\"key_file\": \"" + keysDir + "/keys\", ");
    // k1 is rate limited for 60 s.
    Stack s(cfg, {{"TROLLPROXY_UPSTREAM_KEYS", ""}}, {"--fail-key", "k1=429"});
    std::string key = s.userWithKey("u", "0", "0", "10");
    std::map<std::string, std::string> h{{"x-api-key", key}, {"x-fake-retry-after", "60"}};
    auto keyUses = [&](const std::string& k) {
        std::string seen = get(s.upstream->port(), "/_requests").body;
        int n = 0;
        for (std::size_t p = seen.find("Bearer " + k + "\""); p != std::string::npos;
             p = seen.find("Bearer " + k + "\"", p + 1))
            ++n;
        return n;
    };
    // Rotation hands out k1 or k2 first; after at most two requests k1 has been tried and is
    // cooling.
    for (int i = 0; i < 2; ++i)
        CHECK(post(s.proxy->port(), "/v1/messages", body("a"), h).status == 200);
    REQUIRE(keyUses("k1") == 1);

    std::string next = cfg;
    next.replace(next.find("UPSTREAM"), 8,
                 "http://127.0.0.1:" + std::to_string(s.upstream->port()));
    writeFile(s.dir + "/config.json", next);
    s.proxy->signal(SIGHUP, false);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    for (int i = 0; i < 4; ++i)
        CHECK(post(s.proxy->port(), "/v1/messages", body("a"), h).status == 200);
    CHECK(keyUses("k1") == 1); // still cooling: never tried again
    CHECK(keyUses("k2") == 6);
}

TEST_CASE("a second process on the same journal_path is refused at start; a restart after kill -9 "
          "is not") {
    Stack s(config(kModelA));
    std::string key = s.userWithKey("u", "0", "0", "10");
    std::map<std::string, std::string> h{{"x-api-key", key}};
    const auto argv =
        support::proxyArgv(s.dir + "/config.json", s.ledgerUri, s.dir + "/charges.journal");
    const std::map<std::string, std::string> env{{"TROLLPROXY_UPSTREAM_KEYS", "upstream-key-1"}};
    {
        Process::Options quiet;
        quiet.awaitListening = false;
        quiet.stderrPath = s.dir + "/second.err";
        Process second(argv, env, quiet);
        for (int i = 0; i < 100 && second.running(); ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        REQUIRE_FALSE(second.running());
        const std::string err = support::readFile(s.dir + "/second.err");
        CHECK(err.find("is in use by another process (pid " + std::to_string(s.proxy->pid()) +
                       ")") != std::string::npos);
    }
    // The first one never noticed.
    CHECK(post(s.proxy->port(), "/v1/messages", body("a"), h).status == 200);
    s.proxy->signal(SIGKILL, true);
    Process restarted(argv, env);
    CHECK(post(restarted.port(), "/v1/messages", body("a"), h).status == 200);
}
