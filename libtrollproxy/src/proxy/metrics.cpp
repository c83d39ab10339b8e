// Prometheus text rendering of the proxy's metrics.
#include "proxy/metrics.hpp"

#include <cstdio>
#include <set>

namespace trollproxy::internal {

namespace {

std::string metricName(const std::string& series) {
    return series.substr(0, series.find('{'));
}

std::string number(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
}

} // namespace

void Metrics::add(const std::string& s, double amount) {
    std::lock_guard lock(mutex_);
    counters_[s] += amount;
}

void Metrics::set(const std::string& s, double value) {
    std::lock_guard lock(mutex_);
    gauges_[s] = value;
}

void Metrics::observeLatency(const std::string& route, double seconds) {
    std::lock_guard lock(mutex_);
    Histogram& h = latency_[route];
    for (std::size_t i = 0; i < kBuckets.size(); ++i) {
        if (seconds <= kBuckets[i])
            ++h.counts[i];
    }
    ++h.count;
    h.sum += seconds;
}

std::string Metrics::series(const std::string& name,
                            std::initializer_list<std::pair<const char*, std::string>> labels) {
    std::string out = name;
    char sep = '{';
    for (const auto& [k, v] : labels) {
        out += sep;
        out += k;
        out += "=\"";
        for (char c : v) {
            if (c == '"' || c == '\\')
                out += '\\';
            if (c == '\n') {
                out += "\\n";
                continue;
            }
            out += c;
        }
        out += '"';
        sep = ',';
    }
    if (sep == ',')
        out += '}';
    return out;
}

std::string Metrics::render() {
    std::lock_guard lock(mutex_);
    std::string out;
    auto emit = [&](const std::map<std::string, double>& m, const char* type) {
        std::set<std::string> typed;
        for (const auto& [s, v] : m) {
            std::string name = metricName(s);
            if (typed.insert(name).second)
                out += "# TYPE " + name + " " + type + "\n";
            out += s + " " + number(v) + "\n";
        }
    };
    emit(counters_, "counter");
    emit(gauges_, "gauge");
    out += "# TYPE trollproxy_request_duration_seconds histogram\n";
    for (const auto& [route, h] : latency_) {
        std::string label = "route=\"" + route + "\"";
        for (std::size_t i = 0; i < kBuckets.size(); ++i)
            out += "trollproxy_request_duration_seconds_bucket{" + label + ",le=\"" +
                   number(kBuckets[i]) + "\"} " + std::to_string(h.counts[i]) + "\n";
        out += "trollproxy_request_duration_seconds_bucket{" + label + ",le=\"+Inf\"} " +
               std::to_string(h.count) + "\n";
        out += "trollproxy_request_duration_seconds_sum{" + label + "} " + number(h.sum) + "\n";
        out += "trollproxy_request_duration_seconds_count{" + label + "} " +
               std::to_string(h.count) + "\n";
    }
    return out;
}

} // namespace trollproxy::internal
