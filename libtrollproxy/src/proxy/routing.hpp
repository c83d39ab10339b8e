// Routing: a config with its endpoints resolved to formats and upstream key pools.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "proxy/key_pool.hpp"
#include "proxy/rate_limiter.hpp"
#include "trollproxy/config.hpp"
#include "trollproxy/result.hpp"
#include "trollproxy/usage.hpp"

namespace trollproxy::internal {

/// One endpoint ready to use: its format and its keys.
struct EndpointRoute {
    EndpointConfig endpoint;
    ApiFormat format;
    std::shared_ptr<KeyPool> keys;
    /// Where the keys came from (see UpstreamKeys::source): a reload keeps a
    /// pool's cool-downs and set-asides when its source still gives the same keys.
    std::string source;
};

/// A config with its endpoints resolved; swapped as a whole on reload.
struct Routing {
    std::shared_ptr<const Config> config;
    std::vector<EndpointRoute> endpoints;
    std::shared_ptr<RateLimiter> rateLimiter;

    /// Whether some endpoint serves this format.
    bool serves(ApiFormat format) const;
    /// Key pools by source, to hand to the next buildRouting().
    std::map<std::string, std::shared_ptr<KeyPool>> pools() const;
};

using Getenv = std::function<std::string(const std::string&)>;

/// An endpoint's upstream keys and where they came from: its `api_key_env`
/// variable, else TROLLPROXY_UPSTREAM_KEYS, else the settings' key file
/// ("file:PATH"). The one place that decides it, at start and on reload.
struct UpstreamKeys {
    std::string source;
    std::vector<std::string> keys;
};
UpstreamKeys upstreamKeys(const EndpointConfig& endpoint, const ProxySettings& settings,
                          const Getenv& getenv);

/// Resolves a config. Pools of `previous` whose source gives the same keys are
/// kept. Fails when an endpoint has no upstream key.
Result<std::shared_ptr<const Routing>>
buildRouting(Config config, const Getenv& getenv,
             const std::map<std::string, std::shared_ptr<KeyPool>>& previous);

} // namespace trollproxy::internal
