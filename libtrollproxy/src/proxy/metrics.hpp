// Metrics: counters, gauges and a latency histogram, rendered as Prometheus text.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "trollproxy/money.hpp"

namespace trollproxy::internal {

/// Thread-safe registry. Series are identified by name plus rendered labels,
/// e.g. `trollproxy_requests_total{route="/v1/messages",status="200"}`.
/// Each family is rendered with `# HELP` (from a table of the proxy's
/// families) and `# TYPE` lines; counter names end in `_total`.
class Metrics {
public:
    /// Adds to a counter.
    void add(const std::string& series, double amount = 1);
    /// Adds an exact amount to a USD counter; rendered as a decimal with no
    /// trailing zeros (0.0007095), never through a double.
    void addUsd(const std::string& series, Money amount);
    /// Sets a gauge.
    void set(const std::string& series, double value);
    /// Records one request duration (seconds) for a route.
    void observeLatency(const std::string& route, double seconds);

    /// The Prometheus text exposition of everything.
    std::string render();

    /// Builds `name{k1="v1",k2="v2"}` with escaped label values.
    static std::string series(const std::string& name,
                              std::initializer_list<std::pair<const char*, std::string>> labels);

    /// The shortest text that reads back as exactly `v` ("0.005", "60", "1e-07");
    /// "+Inf", "-Inf" and "NaN" as Prometheus spells them.
    static std::string number(double v);
    /// Nano-USD as a decimal without trailing zeros: 709'500 -> "0.0007095".
    static std::string usd(Money amount);
    /// The `# HELP` text of one of the proxy's families, or empty if unknown.
    static std::string_view help(std::string_view family);

private:
    static constexpr std::array<double, 12> kBuckets{0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                     0.5,   1,    2.5,   5,    10,  60};
    struct Histogram {
        std::array<std::uint64_t, kBuckets.size()> counts{};
        std::uint64_t count = 0;
        double sum = 0;
    };
    std::mutex mutex_;
    std::map<std::string, double> counters_;
    std::map<std::string, Money> usdCounters_;
    std::map<std::string, double> gauges_;
    std::map<std::string, Histogram> latency_;
};

} // namespace trollproxy::internal
