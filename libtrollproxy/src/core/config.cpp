// Parses and validates the goproxy config schema, reporting every problem with its JSON path.
#include "trollproxy/config.hpp"

#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <simdjson.h>

#include "core/json_locate.hpp"
#include "core/text.hpp"

namespace trollproxy {

namespace od = simdjson::ondemand;

const ModelConfig* Config::findModel(std::string_view idOrAlias) const {
    for (const auto& m : models) {
        if (m.id == idOrAlias)
            return &m;
        for (const auto& a : m.aliases) {
            if (a == idOrAlias)
                return &m;
        }
    }
    return nullptr;
}

EndpointApi endpointApi(const EndpointConfig& endpoint) {
    std::string_view path =
        std::string_view(endpoint.baseUrl).substr(0, endpoint.baseUrl.find('?'));
    auto endsWith = [path](std::string_view tail) {
        return path.size() >= tail.size() && path.substr(path.size() - tail.size()) == tail;
    };
    if (endsWith("/chat/completions"))
        return EndpointApi::ChatCompletions;
    if (endsWith("/messages"))
        return EndpointApi::Messages;
    if (endsWith("/responses"))
        return EndpointApi::Responses;
    return EndpointApi::None;
}

std::string Config::journalFile() const {
    if (!settings.journalPath.empty())
        return settings.journalPath;
    return "trollproxy-" + std::to_string(port) + ".journal";
}

std::vector<std::string> Config::routes() const {
    bool chat = false, messages = false, responses = false;
    for (const auto& ep : endpoints) {
        EndpointApi api = endpointApi(ep);
        chat |= api == EndpointApi::ChatCompletions;
        messages |= api == EndpointApi::Messages;
        responses |= api == EndpointApi::Responses;
    }
    std::vector<std::string> out;
    if (chat)
        out.push_back("POST /v1/chat/completions");
    if (messages) {
        out.push_back("POST /v1/messages");
        out.push_back("POST /v1/messages/count_tokens");
    }
    if (responses) {
        out.push_back("POST /v1/responses");
        out.push_back("GET /v1/responses/{id}");
        out.push_back("DELETE /v1/responses/{id}");
    }
    return out;
}

namespace {

constexpr std::int64_t kMaxPriceNanos = 1'000'000LL * Money::kNanosPerUsd; // $1M per Mtok

// Walks one document, collecting errors and warnings with JSON paths.
class ConfigReader {
public:
    explicit ConfigReader(std::string_view name) : name_(name) {}

    void error(const std::string& path, const std::string& why) {
        errors_.push_back(name_ + ": " + path + ": " + why);
    }
    void warn(const std::string& path, const std::string& why) {
        warnings_.push_back(name_ + ": " + path + ": " + why);
    }

    std::optional<std::string> str(od::value v, const std::string& path) {
        std::string_view s;
        if (v.type() != od::json_type::string || v.get_string().get(s)) {
            error(path, "must be a string");
            return std::nullopt;
        }
        return std::string(s);
    }

    std::optional<std::int64_t> integer(od::value v, const std::string& path) {
        std::int64_t i = 0;
        if (v.type() != od::json_type::number || v.get_int64().get(i)) {
            error(path, "must be an integer");
            return std::nullopt;
        }
        return i;
    }

    std::optional<bool> boolean(od::value v, const std::string& path) {
        bool b = false;
        if (v.type() != od::json_type::boolean || v.get_bool().get(b)) {
            error(path, "must be true or false");
            return std::nullopt;
        }
        return b;
    }

    // Reads a number's own text so that 0.13 becomes exactly 130000000 nanos.
    std::optional<std::int64_t> decimal(od::value v, const std::string& path) {
        if (v.type() != od::json_type::number) {
            error(path, "must be a number");
            return std::nullopt;
        }
        std::string_view raw = v.raw_json_token();
        while (!raw.empty() && std::isspace(static_cast<unsigned char>(raw.back())))
            raw.remove_suffix(1);
        auto m = Money::parse(raw);
        if (!m) {
            error(path, m.error().message);
            return std::nullopt;
        }
        return m->nanos;
    }

    std::optional<Money> price(od::value v, const std::string& path) {
        auto n = decimal(v, path);
        if (!n)
            return std::nullopt;
        if (*n < 0) {
            error(path, "must not be negative");
            return std::nullopt;
        }
        if (*n > kMaxPriceNanos) {
            error(path, "is out of range (more than 1000000 USD per million tokens)");
            return std::nullopt;
        }
        return Money{*n};
    }

    // Calls fn(key, path, value) for each member of the object `v` but comments;
    // false (after reporting it) when `v` is not an object.
    template <class Fn> bool forEachMember(od::value v, const std::string& path, Fn&& fn);

    void readEndpoint(od::value v, const std::string& path, EndpointConfig& ep);
    void readModel(od::value v, const std::string& path, ModelConfig& m);
    void readSettings(od::value v, const std::string& path, ProxySettings& s);
    void readTop(od::object top, Config& cfg);

    std::string name_;
    std::vector<std::string> errors_;
    std::vector<std::string> warnings_;

private:
    void readAliases(od::value v, const std::string& path, ModelConfig& m);
    void readBillingUpstream(od::value v, const std::string& path, ModelConfig& m);
    void readMultiplier(od::value v, const std::string& path, ModelConfig& m);
    bool readModelPrice(const std::string& k, od::value v, const std::string& p, ModelConfig& m);
    bool readModelOption(const std::string& k, od::value v, const std::string& p, ModelConfig& m);
    void finishModel(const std::string& path, ModelConfig& m, bool hasBilling, bool hasMultiplier);
    bool readIntSetting(const std::string& k, od::value v, const std::string& p, ProxySettings& s);
    void readMetricsListen(od::value v, const std::string& path, ProxySettings& s);
    void readLedgerFailureMode(od::value v, const std::string& path, ProxySettings& s);
    void readSettlement(od::value v, const std::string& path, ProxySettings& s);
    void readSlice(const std::string& k, od::value v, const std::string& path, ProxySettings& s);
    void readForwardHeaders(od::value v, const std::string& path, ProxySettings& s);
};

bool isComment(std::string_view key) {
    return key.rfind("_comment", 0) == 0;
}

template <class Fn>
bool ConfigReader::forEachMember(od::value v, const std::string& path, Fn&& fn) {
    od::object obj;
    if (v.get_object().get(obj)) {
        error(path, "must be an object");
        return false;
    }
    for (auto field : obj) {
        std::string_view key;
        if (field.unescaped_key().get(key))
            continue;
        std::string k(key);
        std::string p = path + "." + k;
        od::value val = field.value();
        if (isComment(k))
            continue;
        fn(k, p, val);
    }
    return true;
}

void ConfigReader::readEndpoint(od::value v, const std::string& path, EndpointConfig& ep) {
    bool isObject =
        forEachMember(v, path, [&](const std::string& k, const std::string& p, od::value val) {
            if (k == "name") {
                ep.name = str(val, p).value_or("");
            } else if (k == "base_url") {
                ep.baseUrl = str(val, p).value_or("");
            } else if (k == "upstream") {
                ep.upstream = str(val, p).value_or("");
            } else if (k == "api_key_env") {
                ep.apiKeyEnv = str(val, p).value_or("");
            } else if (k == "api_key" || k == "api_keys") {
                error(p, "upstream keys do not belong in the config; use TROLLPROXY_UPSTREAM_KEYS "
                         "or api_key_env");
            } else {
                warn(p, "unknown key (ignored)");
            }
        });
    if (!isObject)
        return;
    if (ep.baseUrl.empty()) {
        error(path + ".base_url", "is missing");
    } else if (ep.baseUrl.rfind("http://", 0) != 0 && ep.baseUrl.rfind("https://", 0) != 0) {
        error(path + ".base_url", "\"" + ep.baseUrl + "\" is not an http:// or https:// URL");
    }
}

void ConfigReader::readAliases(od::value v, const std::string& path, ModelConfig& m) {
    od::array arr;
    if (v.get_array().get(arr)) {
        error(path, "must be an array of strings");
        return;
    }
    std::size_t i = 0;
    for (auto item : arr) {
        std::string ip = path + "[" + std::to_string(i) + "]";
        if (auto s = str(item.value(), ip)) {
            if (s->empty())
                error(ip, "an alias must not be empty");
            else
                m.aliases.push_back(*s);
        }
        ++i;
    }
}

void ConfigReader::readBillingUpstream(od::value v, const std::string& path, ModelConfig& m) {
    auto s = str(v, path);
    if (!s)
        return;
    m.billingUpstream = *s;
    if (*s == "openhands")
        m.pool = Pool::CreditsNew;
    else if (*s == "ohmygpt")
        m.pool = Pool::Credits;
    else
        error(path, "\"" + *s + "\" is not one of openhands, ohmygpt");
}

void ConfigReader::readMultiplier(od::value v, const std::string& path, ModelConfig& m) {
    auto n = decimal(v, path);
    if (!n)
        return;
    if (*n <= 0)
        error(path, "must be greater than 0");
    else if (*n > 1000LL * Money::kNanosPerUsd)
        error(path, "is out of range (more than 1000)");
    else
        m.prices.multiplier = Factor{*n};
}

// The per-Mtok prices. A price every model has reads as 0 when invalid (the
// error fails the config); an optional one stays unset.
bool ConfigReader::readModelPrice(const std::string& k, od::value v, const std::string& p,
                                  ModelConfig& m) {
    static const std::pair<const char*, Money PriceTable::*> kPrices[] = {
        {"input_price_per_mtok", &PriceTable::input},
        {"output_price_per_mtok", &PriceTable::output},
        {"cache_write_price_per_mtok", &PriceTable::cacheWrite},
        {"cache_hit_price_per_mtok", &PriceTable::cacheRead},
    };
    for (const auto& [key, member] : kPrices) {
        if (k == key) {
            m.prices.*member = price(v, p).value_or(Money{});
            return true;
        }
    }
    if (k == "cache_write_1h_price_per_mtok")
        m.prices.cacheWrite1h = price(v, p);
    else if (k == "batch_input_price_per_mtok")
        m.batchInputPrice = price(v, p);
    else if (k == "batch_output_price_per_mtok")
        m.batchOutputPrice = price(v, p);
    else
        return false;
    return true;
}

// The model's strings and generation options; false for a key it does not know.
bool ConfigReader::readModelOption(const std::string& k, od::value v, const std::string& p,
                                   ModelConfig& m) {
    if (k == "name") {
        m.name = str(v, p).value_or("");
    } else if (k == "id") {
        m.id = str(v, p).value_or("");
    } else if (k == "type") {
        m.type = str(v, p).value_or("");
        static const std::set<std::string> kTypes{"anthropic", "openai", "openhands", "ohmygpt"};
        if (!m.type.empty() && !kTypes.count(m.type))
            error(p, "\"" + m.type + "\" is not one of anthropic, openai, openhands, ohmygpt");
    } else if (k == "upstream") {
        m.upstream = str(v, p).value_or("");
    } else if (k == "upstream_model_id") {
        m.upstreamModelId = str(v, p).value_or("");
    } else if (k == "reasoning") {
        m.reasoning = str(v, p).value_or("");
        if (!m.reasoning.empty() && m.reasoning != "low" && m.reasoning != "medium" &&
            m.reasoning != "high")
            error(p, "\"" + m.reasoning + "\" is not one of low, medium, high");
    } else if (k == "thinking_budget") {
        m.thinkingBudget = integer(v, p);
        if (m.thinkingBudget && *m.thinkingBudget < 0)
            error(p, "must not be negative");
    } else {
        return false;
    }
    return true;
}

void ConfigReader::readModel(od::value v, const std::string& path, ModelConfig& m) {
    bool hasBilling = false;
    bool hasMultiplier = false;
    bool isObject =
        forEachMember(v, path, [&](const std::string& k, const std::string& p, od::value val) {
            if (k == "id_aliases") {
                readAliases(val, p, m);
            } else if (k == "billing_upstream") {
                hasBilling = true;
                readBillingUpstream(val, p, m);
            } else if (k == "billing_multiplier") {
                hasMultiplier = true;
                readMultiplier(val, p, m);
            } else if (!readModelPrice(k, val, p, m) && !readModelOption(k, val, p, m)) {
                warn(p, "unknown key (ignored)");
            }
        });
    if (isObject)
        finishModel(path, m, hasBilling, hasMultiplier);
}

// Checks the required keys and fills in the defaults.
void ConfigReader::finishModel(const std::string& path, ModelConfig& m, bool hasBilling,
                               bool hasMultiplier) {
    if (m.id.empty())
        error(path + ".id", "is missing");
    if (!hasBilling)
        error(path + ".billing_upstream", "is missing (one of openhands, ohmygpt)");
    if (!hasMultiplier)
        m.prices.multiplier = Factor{Money::kNanosPerUsd};
    // Anthropic's published rule: a 1-hour cache write costs twice the input price.
    if (!m.prices.cacheWrite1h)
        m.prices.cacheWrite1h = Money{m.prices.input.nanos * 2};
    if (m.upstreamModelId.empty())
        m.upstreamModelId = m.id;
    if (m.name.empty())
        m.name = m.id;
}

struct IntSetting {
    const char* key;
    std::int64_t ProxySettings::*member;
    std::int64_t min;
    std::int64_t max;
};

const IntSetting kIntSettings[] = {
    {"rate_limit_per_minute", &ProxySettings::rateLimitPerMinute, 0, 1'000'000'000},
    {"connect_timeout_ms", &ProxySettings::connectTimeoutMs, 1, 3'600'000},
    {"first_byte_timeout_ms", &ProxySettings::firstByteTimeoutMs, 1, 86'400'000},
    {"idle_timeout_ms", &ProxySettings::idleTimeoutMs, 1, 86'400'000},
    {"worker_threads", &ProxySettings::workerThreads, 1, 100'000},
    {"max_body_bytes", &ProxySettings::maxBodyBytes, 1024, 1LL << 32},
    {"hold_ttl_seconds", &ProxySettings::holdTtlSeconds, 1, 86'400 * 7},
    {"shutdown_grace_seconds", &ProxySettings::shutdownGraceSeconds, 0, 86'400},
    {"default_max_output_tokens", &ProxySettings::defaultMaxOutputTokens, 1, 10'000'000},
    {"ledger_timeout_ms", &ProxySettings::ledgerTimeoutMs, 1, 600'000},
    {"auth_cache_ms", &ProxySettings::authCacheMs, 0, 60'000},
    {"slice_idle_seconds", &ProxySettings::sliceIdleSeconds, 1, 86'400},
};

// One of the integer settings of kIntSettings; false for another key.
bool ConfigReader::readIntSetting(const std::string& k, od::value v, const std::string& p,
                                  ProxySettings& s) {
    for (const auto& is : kIntSettings) {
        if (k != is.key)
            continue;
        if (auto n = integer(v, p)) {
            if (*n < is.min || *n > is.max)
                error(p, "must be between " + std::to_string(is.min) + " and " +
                             std::to_string(is.max));
            else
                s.*is.member = *n;
        }
        return true;
    }
    return false;
}

void ConfigReader::readMetricsListen(od::value v, const std::string& path, ProxySettings& s) {
    auto addr = str(v, path).value_or("");
    auto colon = addr.rfind(':');
    std::string port = colon == std::string::npos ? "" : addr.substr(colon + 1);
    bool digits = !port.empty() && port.size() <= 5 &&
                  port.find_first_not_of("0123456789") == std::string::npos;
    if (addr.empty() || addr == "off")
        s.metricsListen.clear();
    else if (colon == 0 || !digits || std::stoi(port) > 65535)
        error(path, "\"" + addr + "\" is not HOST:PORT (port 0-65535), \"\" or \"off\"");
    else
        s.metricsListen = addr;
}

void ConfigReader::readSettlement(od::value v, const std::string& path, ProxySettings& s) {
    auto mode = str(v, path).value_or("");
    if (mode == "synchronous")
        s.settlement = Settlement::Synchronous;
    else if (mode == "journal_first")
        s.settlement = Settlement::JournalFirst;
    else
        error(path, "\"" + mode + "\" is not one of synchronous, journal_first");
}

void ConfigReader::readSlice(const std::string& k, od::value v, const std::string& path,
                             ProxySettings& s) {
    auto n = decimal(v, path);
    if (!n)
        return;
    if (k == "slice_max_usd") {
        if (*n < 0 || *n > 1'000'000LL * Money::kNanosPerUsd)
            error(path, "must be between 0 (off) and 1000000 USD");
        else
            s.sliceMax = Money{*n};
        return;
    }
    const std::int64_t permille = *n / (Money::kNanosPerUsd / 1000);
    if (permille < 1 || *n > Money::kNanosPerUsd)
        error(path, "must be between 0.001 and 1");
    else
        s.sliceFreePermille = permille;
}

void ConfigReader::readLedgerFailureMode(od::value v, const std::string& path, ProxySettings& s) {
    auto mode = str(v, path).value_or("");
    if (mode == "fail_closed")
        s.ledgerFailureMode = LedgerFailureMode::FailClosed;
    else if (mode == "fail_open")
        s.ledgerFailureMode = LedgerFailureMode::FailOpen;
    else
        error(path, "\"" + mode + "\" is not one of fail_closed, fail_open");
}

// A forward_headers entry: letters, digits, '-', '_', and an optional trailing '*'
// after at least one other character.
bool isHeaderPattern(std::string_view name) {
    bool ok = !name.empty();
    for (std::size_t c = 0; c < name.size(); ++c) {
        char ch = name[c];
        bool last = c + 1 == name.size();
        ok &= std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' ||
              (ch == '*' && last && c > 0);
    }
    return ok;
}

void ConfigReader::readForwardHeaders(od::value v, const std::string& path, ProxySettings& s) {
    od::array arr;
    if (v.get_array().get(arr)) {
        error(path, "must be an array of header names");
        return;
    }
    static const std::set<std::string> kNever{
        "authorization", "x-api-key",      "proxy-authorization", "cookie",
        "host",          "content-length", "transfer-encoding",   "connection"};
    std::size_t i = 0;
    for (auto item : arr) {
        std::string ip = path + "[" + std::to_string(i++) + "]";
        auto name = str(item.value(), ip);
        if (!name)
            continue;
        std::string lowered = internal::asciiLower(*name);
        if (!isHeaderPattern(*name))
            error(ip, "\"" + *name +
                          "\" is not a header name (letters, digits, '-', '_', and an "
                          "optional trailing '*')");
        else if (kNever.count(lowered) || lowered == "*")
            error(ip, "\"" + *name + "\" can never be forwarded");
        else
            s.forwardHeaders.push_back(lowered);
    }
}

void ConfigReader::readSettings(od::value v, const std::string& path, ProxySettings& s) {
    forEachMember(v, path, [&](const std::string& k, const std::string& p, od::value val) {
        if (readIntSetting(k, val, p, s))
            return;
        if (k == "metrics_listen")
            readMetricsListen(val, p, s);
        else if (k == "ledger_failure_mode")
            readLedgerFailureMode(val, p, s);
        else if (k == "settlement")
            readSettlement(val, p, s);
        else if (k == "slice_max_usd" || k == "slice_fraction")
            readSlice(k, val, p, s);
        else if (k == "journal_path")
            s.journalPath = str(val, p).value_or("");
        else if (k == "key_file")
            s.keyFile = str(val, p).value_or("");
        else if (k == "forward_headers")
            readForwardHeaders(val, p, s);
        else
            warn(p, "unknown key (ignored)");
    });
}

void ConfigReader::readTop(od::object top, Config& cfg) {
    for (auto field : top) {
        std::string_view key;
        if (field.unescaped_key().get(key))
            continue;
        std::string k(key);
        od::value val = field.value();
        if (isComment(k))
            continue;
        if (k == "port") {
            if (auto n = integer(val, k)) {
                if (*n < 1 || *n > 65535)
                    error(k, std::to_string(*n) + " is out of range (1-65535)");
                else
                    cfg.port = static_cast<int>(*n);
            }
        } else if (k == "endpoints" || k == "models") {
            od::array arr;
            if (val.get_array().get(arr)) {
                error(k, "must be an array");
                continue;
            }
            std::size_t i = 0;
            for (auto item : arr) {
                std::string p = k + "[" + std::to_string(i++) + "]";
                if (k == "endpoints")
                    readEndpoint(item.value(), p, cfg.endpoints.emplace_back());
                else
                    readModel(item.value(), p, cfg.models.emplace_back());
            }
        } else if (k == "system_prompt") {
            cfg.systemPrompt = str(val, k).value_or("");
        } else if (k == "user_agent") {
            cfg.userAgent = str(val, k).value_or("");
        } else if (k == "trollproxy") {
            readSettings(val, k, cfg.settings);
        } else {
            warn(k, "unknown key (ignored)");
        }
    }
}

// Checks that no model id or alias names two models.
void checkDuplicates(const Config& cfg, ConfigReader& r) {
    std::map<std::string, std::string> seen; // name -> path of first use
    for (std::size_t i = 0; i < cfg.models.size(); ++i) {
        const auto& m = cfg.models[i];
        std::string base = "models[" + std::to_string(i) + "]";
        auto claim = [&](const std::string& name, const std::string& path) {
            if (name.empty())
                return;
            auto [it, fresh] = seen.emplace(name, path);
            if (!fresh)
                r.error(path, "\"" + name + "\" is already used by " + it->second);
        };
        claim(m.id, base + ".id");
        for (std::size_t a = 0; a < m.aliases.size(); ++a)
            claim(m.aliases[a], base + ".id_aliases[" + std::to_string(a) + "]");
    }
}

} // namespace

Result<Config> parseConfig(std::string_view json, std::string_view sourceName) {
    std::string name(sourceName);
    internal::JsonSyntaxError syntax;
    if (!internal::checkJsonSyntax(json, syntax)) {
        return Error{ErrorCode::ParseError, name + ": line " + std::to_string(syntax.line) +
                                                ", column " + std::to_string(syntax.column) +
                                                ": malformed JSON: " + syntax.reason};
    }
    simdjson::padded_string padded(json);
    od::parser parser;
    od::document doc;
    if (auto err = parser.iterate(padded).get(doc))
        return Error{ErrorCode::ParseError, name + ": " + simdjson::error_message(err)};
    od::object top;
    if (doc.get_object().get(top))
        return Error{ErrorCode::InvalidArgument, name + ": the top level must be an object"};

    ConfigReader reader(name);
    Config cfg;
    cfg.sourceName = name;
    reader.readTop(top, cfg);
    checkDuplicates(cfg, reader);
    if (cfg.models.empty() && reader.errors_.empty())
        reader.error("models", "no models are configured");

    if (!reader.errors_.empty()) {
        std::string all;
        for (const auto& e : reader.errors_)
            all += (all.empty() ? "" : "\n") + e;
        return Error{ErrorCode::InvalidArgument, all};
    }
    cfg.warnings = std::move(reader.warnings_);
    return cfg;
}

Result<Config> loadConfigFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        return Error{ErrorCode::NotFound, path + ": cannot open the file"};
    std::ostringstream ss;
    ss << in.rdbuf();
    auto slash = path.find_last_of('/');
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    return parseConfig(ss.str(), base);
}

} // namespace trollproxy
