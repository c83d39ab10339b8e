// Metrics: counters, gauges and a latency histogram, rendered as Prometheus text.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace trollproxy::internal {

/// Thread-safe registry. Series are identified by name plus rendered labels,
/// e.g. `trollproxy_requests_total{route="/v1/messages",status="200"}`.
class Metrics {
public:
    void add(const std::string& series, double amount = 1);
    void set(const std::string& series, double value);
    /// Records one request duration (seconds) for a route.
    void observeLatency(const std::string& route, double seconds);

    /// The Prometheus text exposition of everything.
    std::string render();

    /// Builds `name{k1="v1",k2="v2"}` with escaped label values.
    static std::string series(const std::string& name,
                              std::initializer_list<std::pair<const char*, std::string>> labels);

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
    std::map<std::string, double> gauges_;
    std::map<std::string, Histogram> latency_;
};

} // namespace trollproxy::internal
