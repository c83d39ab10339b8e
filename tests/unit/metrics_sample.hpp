// The series the proxy service records, for the metrics tests to render.
#pragma once

#include "proxy/metrics.hpp"

namespace trollproxy::internal::test {

/// Records one of every kind of series ProxyServiceImpl and forward() record,
/// with the same names and labels (a model name that needs escaping included).
inline void recordLikeTheService(Metrics& m) {
    using S = std::string;
    for (auto [route, status] : {std::pair{"/v1/messages", "200"},
                                 {"/v1/chat/completions", "402"},
                                 {"/v1/responses/{id}", "404"},
                                 {"/health", "200"}})
        m.add(Metrics::series("trollproxy_requests_total", {{"route", route}, {"status", status}}));
    m.add(Metrics::series("trollproxy_requests_total",
                          {{"route", "/v1/messages"}, {"status", "200"}}));
    for (double s : {0.004, 0.005, 0.3, 75.0})
        m.observeLatency("/v1/messages", s);
    m.observeLatency("/v1/chat/completions", 1.5);
    m.add(Metrics::series("trollproxy_upstream_errors_total",
                          {{"endpoint", "main"}, {"kind", "timeout"}}));
    m.add(Metrics::series("trollproxy_upstream_errors_total",
                          {{"endpoint", "main"}, {"kind", "429"}}));
    for (const char* op : {"authenticate", "reserve", "release", "settle", "renew"})
        m.add(Metrics::series("trollproxy_ledger_errors_total", {{"op", op}}));
    m.add("trollproxy_unrecorded_charges_total");
    m.add("trollproxy_journalled_charges_total");
    m.addUsd(Metrics::series("trollproxy_shortfall_usd_total", {{"pool", "credits"}}),
             Money{1'250'000});
    const S model = "claude-\"odd\"\\model\nv2";
    m.addUsd(Metrics::series("trollproxy_cost_usd_total", {{"model", model}, {"pool", "credits"}}),
             Money{709'500});
    m.addUsd(
        Metrics::series("trollproxy_cost_usd_total", {{"model", "gpt-5"}, {"pool", "creditsNew"}}),
        Money{23'100'000});
    for (auto [kind, n] :
         {std::pair{"input", 1000}, {"output", 2000}, {"cache_write", 500}, {"cache_read", 10000}})
        m.add(Metrics::series("trollproxy_tokens_total",
                              {{"model", "gpt-5"}, {"pool", "creditsNew"}, {"kind", kind}}),
              n);
    m.set("trollproxy_ledger_up", 1);
    m.add("trollproxy_holds_expired_total", 3);
    m.add("trollproxy_holds_released_at_start_total", 2);
    m.set("trollproxy_journal_pending", 0);
    m.add("trollproxy_settlement_batches_total", 2);
    m.add("trollproxy_settlement_charges_total", 70);
    m.add("trollproxy_settlement_flush_seconds_total", 0.0125);
    m.set("trollproxy_settlement_queue_depth", 0);
    for (auto [state, on] : {std::pair{"active", 0}, {"cooling_down", 1}, {"set_aside", 0}})
        m.set(Metrics::series("trollproxy_upstream_key_state",
                              {{"endpoint", "main"}, {"key", "0"}, {"state", state}}),
              on);
}

} // namespace trollproxy::internal::test
