// Fuzz target: parseConfig on any text either fails with a message or yields a config that keeps
// its promises.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "trollproxy/config.hpp"

using namespace trollproxy;

namespace {

void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "fuzz_config: invariant violated: %s\n", what);
        std::abort();
    }
}

bool validPrice(Money m) {
    return m.nanos >= 0 && m.nanos <= 1'000'000 * Money::kNanosPerUsd;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    auto r = parseConfig(text, "fuzz.json");
    if (!r) {
        require(!r.error().message.empty(), "an error without a message");
        require(r.error().code == ErrorCode::ParseError ||
                    r.error().code == ErrorCode::InvalidArgument,
                "an unexpected error code");
        return 0;
    }
    const Config& c = *r;
    require(c.port >= 1 && c.port <= 65535, "a port out of range");
    require(!c.models.empty(), "a valid config without models");
    for (const auto& ep : c.endpoints)
        require(ep.baseUrl.rfind("http://", 0) == 0 || ep.baseUrl.rfind("https://", 0) == 0,
                "an endpoint without an http(s) base_url");
    for (const auto& m : c.models) {
        require(!m.id.empty() && !m.name.empty() && !m.upstreamModelId.empty(),
                "a model without id or name");
        require(m.billingUpstream == "openhands" || m.billingUpstream == "ohmygpt",
                "a model without a pool");
        require((m.pool == Pool::Credits) == (m.billingUpstream == "ohmygpt"),
                "a model in the wrong pool");
        require(validPrice(m.prices.input) && validPrice(m.prices.output) &&
                    validPrice(m.prices.cacheWrite) && validPrice(m.prices.cacheRead),
                "a price out of range");
        require(m.prices.multiplier.billionths > 0 &&
                    m.prices.multiplier.billionths <= 1000 * Money::kNanosPerUsd,
                "a multiplier out of range");
        require(!m.thinkingBudget || *m.thinkingBudget >= 0, "a negative thinking budget");
        // Ids and aliases are unique, so each finds its own model.
        require(c.findModel(m.id) == &m, "a model id that finds another model");
        for (const auto& a : m.aliases)
            require(c.findModel(a) == &m, "an alias that finds another model");
    }
    const ProxySettings& s = c.settings;
    require(s.maxBodyBytes >= 1024 && s.workerThreads >= 1 && s.connectTimeoutMs >= 1 &&
                s.holdTtlSeconds >= 1 && s.defaultMaxOutputTokens >= 1 &&
                s.rateLimitPerMinute >= 0 && s.shutdownGraceSeconds >= 0,
            "a setting out of range");
    return 0;
}
