// Routing: endpoints to formats, and each endpoint's upstream keys from one place.
#include "proxy/routing.hpp"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <iterator>

namespace trollproxy::internal {

namespace {

std::string trim(std::string s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
        s.pop_back();
    std::size_t b = 0;
    while (b < s.size() && std::isspace(static_cast<unsigned char>(s[b])))
        ++b;
    return s.substr(b);
}

// Keys separated by commas or newlines; blank lines and '#' comments skipped.
std::vector<std::string> splitKeys(const std::string& s) {
    std::vector<std::string> out;
    std::size_t p = 0;
    while (p <= s.size()) {
        std::size_t e = s.find_first_of(",\n", p);
        if (e == std::string::npos)
            e = s.size();
        std::string k = trim(s.substr(p, e - p));
        if (!k.empty() && k[0] != '#')
            out.push_back(k);
        p = e + 1;
    }
    return out;
}

std::optional<ApiFormat> routeFormat(const EndpointConfig& ep) {
    switch (endpointApi(ep)) {
    case EndpointApi::ChatCompletions:
        return ApiFormat::OpenAI;
    case EndpointApi::Messages:
        return ApiFormat::Anthropic;
    case EndpointApi::Responses:
        return ApiFormat::Responses;
    case EndpointApi::None:
        break;
    }
    return std::nullopt;
}

std::shared_ptr<KeyPool>
keptOrNew(const UpstreamKeys& keys,
          const std::map<std::string, std::shared_ptr<KeyPool>>& previous) {
    auto old = previous.find(keys.source);
    bool same = old != previous.end() && old->second->size() == keys.keys.size();
    for (std::size_t i = 0; same && i < keys.keys.size(); ++i)
        same = old->second->key(i) == keys.keys[i];
    return same ? old->second : std::make_shared<KeyPool>(keys.keys);
}

} // namespace

bool Routing::serves(ApiFormat format) const {
    for (const auto& ep : endpoints) {
        if (ep.format == format)
            return true;
    }
    return false;
}

std::map<std::string, std::shared_ptr<KeyPool>> Routing::pools() const {
    std::map<std::string, std::shared_ptr<KeyPool>> out;
    for (const auto& ep : endpoints)
        out[ep.source] = ep.keys;
    return out;
}

UpstreamKeys upstreamKeys(const EndpointConfig& endpoint, const ProxySettings& settings,
                          const Getenv& getenv) {
    UpstreamKeys out;
    out.source = endpoint.apiKeyEnv.empty() ? "TROLLPROXY_UPSTREAM_KEYS" : endpoint.apiKeyEnv;
    out.keys = splitKeys(getenv(out.source));
    if (out.keys.empty() && endpoint.apiKeyEnv.empty() && !settings.keyFile.empty()) {
        std::ifstream in(settings.keyFile);
        std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        out.keys = splitKeys(all);
        out.source = "file:" + settings.keyFile;
    }
    return out;
}

Result<std::shared_ptr<const Routing>>
buildRouting(Config config, const Getenv& getenv,
             const std::map<std::string, std::shared_ptr<KeyPool>>& previous) {
    Getenv env = getenv ? getenv : [](const std::string& n) {
        const char* v = std::getenv(n.c_str());
        return std::string(v ? v : "");
    };
    auto routing = std::make_shared<Routing>();
    std::map<std::string, std::shared_ptr<KeyPool>> pools;
    for (const auto& ep : config.endpoints) {
        auto format = routeFormat(ep);
        if (!format)
            continue; // serves no route
        UpstreamKeys keys = upstreamKeys(ep, config.settings, env);
        if (keys.keys.empty())
            return Error{ErrorCode::InvalidArgument,
                         config.sourceName + ": endpoint \"" + ep.name +
                             "\" has no upstream key (set " +
                             (ep.apiKeyEnv.empty()
                                  ? std::string("TROLLPROXY_UPSTREAM_KEYS or trollproxy.key_file")
                                  : ep.apiKeyEnv) +
                             ")"};
        auto& pool = pools[keys.source];
        if (!pool)
            pool = keptOrNew(keys, previous);
        routing->endpoints.push_back({ep, *format, pool, keys.source});
    }
    routing->rateLimiter = std::make_shared<RateLimiter>(config.settings.rateLimitPerMinute);
    routing->config = std::make_shared<const Config>(std::move(config));
    return std::shared_ptr<const Routing>(routing);
}

} // namespace trollproxy::internal
