// Prometheus text rendering of the proxy's metrics.
#include "proxy/metrics.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <utility>

namespace trollproxy::internal {

namespace {

constexpr std::string_view kLatencyFamily = "trollproxy_request_duration_seconds";

// The families the proxy records, for their `# HELP` lines.
constexpr std::pair<std::string_view, std::string_view> kHelp[] = {
    {"trollproxy_cost_usd_total", "USD charged for requests, by model and pool."},
    {"trollproxy_holds_expired_total", "Credit holds released by the expiry sweep."},
    {"trollproxy_holds_released_at_start_total",
     "Holds this process's previous life left, released when it started again."},
    {"trollproxy_journal_corrupt_lines_total",
     "Journal lines torn by a crash mid-write, dropped at start (never acknowledged)."},
    {"trollproxy_journal_pending", "Charges in the journal not yet applied to the ledger."},
    {"trollproxy_journalled_charges_total",
     "Charges written to the journal because the ledger did not settle them."},
    {"trollproxy_ledger_errors_total", "Ledger operations that failed, by operation."},
    {"trollproxy_ledger_up", "1 if the ledger answered the last ping, else 0."},
    {"trollproxy_request_duration_seconds",
     "Time to answer a request, by route; streams until their last byte."},
    {"trollproxy_requests_total", "Requests answered, by route and HTTP status."},
    {"trollproxy_settlement_batches_total", "Batches of journalled charges the flusher settled."},
    {"trollproxy_settlement_charges_total", "Journalled charges the flusher settled."},
    {"trollproxy_settlement_flush_seconds_total", "Time the flusher spent settling batches."},
    {"trollproxy_settlement_queue_depth",
     "Journalled charges not yet settled, as the flusher last saw them."},
    {"trollproxy_shortfall_usd_total",
     "USD a settlement could not take because the balance ran out, by pool."},
    {"trollproxy_slice_fallbacks_total",
     "Requests that held per request because no budget slice could cover them."},
    {"trollproxy_slice_refills_total",
     "Budget slice refills, by result (granted, refused, unavailable)."},
    {"trollproxy_slices_held_usd", "USD the process's budget slices hold, not yet drawn on."},
    {"trollproxy_slices_outstanding", "Budget slices this process holds in the ledger."},
    {"trollproxy_slices_released_total", "Budget slices given back to the balance."},
    {"trollproxy_tokens_total", "Billed tokens, by model, pool and kind."},
    {"trollproxy_unrecorded_charges_total",
     "Charges neither settled nor journalled: lost, and logged as critical."},
    {"trollproxy_upstream_errors_total",
     "Failed upstream attempts, by endpoint and kind (an error code or HTTP status)."},
    {"trollproxy_upstream_key_state",
     "1 for the state (active, cooling_down, set_aside) each upstream key is in, else 0."},
};

std::string metricName(const std::string& series) {
    return series.substr(0, series.find('{'));
}

// `"value"` with the text format's escapes: backslash, double quote, newline.
void appendLabelValue(std::string& out, std::string_view v) {
    out += '"';
    for (char c : v) {
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        if (c == '"' || c == '\\')
            out += '\\';
        out += c;
    }
    out += '"';
}

} // namespace

std::string Metrics::number(double v) {
    if (std::isnan(v))
        return "NaN";
    if (std::isinf(v))
        return v > 0 ? "+Inf" : "-Inf";
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    (void)ec; // 32 bytes hold any shortest double
    return std::string(buf, end);
}

std::string Metrics::usd(Money amount) {
    bool negative = amount.nanos < 0;
    // Unsigned, so that INT64_MIN negates.
    std::uint64_t n = negative ? 0 - static_cast<std::uint64_t>(amount.nanos)
                               : static_cast<std::uint64_t>(amount.nanos);
    const auto perUsd = static_cast<std::uint64_t>(Money::kNanosPerUsd);
    std::string out = negative ? "-" : "";
    out += std::to_string(n / perUsd);
    if (std::uint64_t frac = n % perUsd; frac != 0) {
        char digits[16];
        int len =
            std::snprintf(digits, sizeof digits, "%09llu", static_cast<unsigned long long>(frac));
        while (len > 0 && digits[len - 1] == '0')
            --len;
        out += '.';
        out.append(digits, static_cast<std::size_t>(len));
    }
    return out;
}

std::string_view Metrics::help(std::string_view family) {
    for (const auto& [name, text] : kHelp) {
        if (name == family)
            return text;
    }
    return {};
}

void Metrics::add(const std::string& s, double amount) {
    std::lock_guard lock(mutex_);
    counters_[s] += amount;
}

void Metrics::addUsd(const std::string& s, Money amount) {
    std::lock_guard lock(mutex_);
    std::int64_t& total = usdCounters_[s].nanos;
    if (__builtin_add_overflow(total, amount.nanos, &total)) // saturate, as pricing does
        total = amount.nanos > 0 ? std::numeric_limits<std::int64_t>::max()
                                 : std::numeric_limits<std::int64_t>::min();
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
        out += '=';
        appendLabelValue(out, v);
        sep = ',';
    }
    if (sep == ',')
        out += '}';
    return out;
}

std::string Metrics::render() {
    std::lock_guard lock(mutex_);
    // Family name -> type and sample lines; a family's samples must be contiguous.
    std::map<std::string, std::pair<const char*, std::string>> families;
    auto sample = [&](const std::string& s, const char* type, const std::string& value) {
        auto& [t, lines] = families[metricName(s)];
        t = type;
        lines += s + " " + value + "\n";
    };
    for (const auto& [s, v] : counters_) {
        auto money = usdCounters_.find(s); // both kinds on one series: a double sum
        sample(s, "counter",
               number(money == usdCounters_.end() ? v : v + money->second.toUsdDouble()));
    }
    for (const auto& [s, m] : usdCounters_) {
        if (!counters_.contains(s))
            sample(s, "counter", usd(m));
    }
    for (const auto& [s, v] : gauges_)
        sample(s, "gauge", number(v));

    std::string latency;
    const std::string name(kLatencyFamily);
    for (const auto& [route, h] : latency_) {
        std::string label = "{route=";
        appendLabelValue(label, route);
        for (std::size_t i = 0; i < kBuckets.size(); ++i)
            latency += name + "_bucket" + label + ",le=\"" + number(kBuckets[i]) + "\"} " +
                       std::to_string(h.counts[i]) + "\n";
        latency += name + "_bucket" + label + ",le=\"+Inf\"} " + std::to_string(h.count) + "\n";
        latency += name + "_sum" + label + "} " + number(h.sum) + "\n";
        latency += name + "_count" + label + "} " + std::to_string(h.count) + "\n";
    }
    families[name] = {"histogram", std::move(latency)};

    std::string out;
    for (const auto& [family, typed] : families) {
        std::string_view text = help(family);
        out += "# HELP " + family + " " +
               std::string(text.empty() ? "A trollproxy metric." : text) + "\n# TYPE " + family +
               " " + typed.first + "\n" + typed.second;
    }
    return out;
}

} // namespace trollproxy::internal
