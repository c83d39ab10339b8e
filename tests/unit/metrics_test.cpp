// Tests of the Prometheus text of proxy/metrics: numbers, exact USD, families, histograms.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <set>
#include <sstream>
#include <vector>

#include "metrics_sample.hpp"
#include "proxy/metrics.hpp"

using namespace trollproxy;
using namespace trollproxy::internal;

namespace {

bool has(const std::string& text, const std::string& line) {
    return text.find(line) != std::string::npos;
}

std::vector<std::string> lines(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);)
        out.push_back(l);
    return out;
}

} // namespace

TEST_CASE("numbers print in the shortest form that reads back exactly") {
    CHECK(Metrics::number(0.005) == "0.005");
    CHECK(Metrics::number(0.025) == "0.025");
    CHECK(Metrics::number(60) == "60");
    CHECK(Metrics::number(1) == "1");
    CHECK(Metrics::number(0) == "0");
    CHECK(Metrics::number(12345) == "12345");
    CHECK(Metrics::number(0.1 + 0.2) == "0.30000000000000004");
    CHECK(Metrics::number(1e-7) == "1e-07");
    CHECK(Metrics::number(std::numeric_limits<double>::infinity()) == "+Inf");
    CHECK(Metrics::number(-std::numeric_limits<double>::infinity()) == "-Inf");
    CHECK(Metrics::number(std::nan("")) == "NaN");
    for (double v : {0.00070950000000000006, 75.309, 1.0 / 3, 6.02214076e23, 5e-324})
        CHECK(std::strtod(Metrics::number(v).c_str(), nullptr) == v);
}

TEST_CASE("USD amounts print as exact decimals without trailing zeros") {
    CHECK(Metrics::usd(Money{709'500}) == "0.0007095");
    CHECK(Metrics::usd(Money{0}) == "0");
    CHECK(Metrics::usd(Money{1}) == "0.000000001");
    CHECK(Metrics::usd(Money{3'750'000'000}) == "3.75");
    CHECK(Metrics::usd(Money{14'000'000'000}) == "14");
    CHECK(Metrics::usd(Money{-1'500'000'000}) == "-1.5");
    CHECK(Metrics::usd(Money{INT64_MAX}) == "9223372036.854775807");
    CHECK(Metrics::usd(Money{INT64_MIN}) == "-9223372036.854775808");
}

TEST_CASE("USD counters add exactly, where doubles would drift") {
    Metrics m;
    const std::string s =
        Metrics::series("trollproxy_cost_usd_total", {{"model", "m"}, {"pool", "credits"}});
    for (int i = 0; i < 10; ++i)
        m.addUsd(s, Money{100'000'000}); // 0.1 ten times: 0.9999999999999999 in doubles
    CHECK(has(m.render(), s + " 1\n"));
    m.addUsd(s, Money{709'500});
    CHECK(has(m.render(), s + " 1.0007095\n"));
    Metrics sat;
    sat.addUsd("x_usd_total", Money{INT64_MAX});
    sat.addUsd("x_usd_total", Money{1});
    CHECK(has(sat.render(), "x_usd_total 9223372036.854775807\n"));
}

TEST_CASE("counters, gauges and their families") {
    Metrics m;
    m.add(Metrics::series("trollproxy_requests_total",
                          {{"route", "/v1/messages"}, {"status", "200"}}));
    m.add(Metrics::series("trollproxy_requests_total",
                          {{"route", "/v1/messages"}, {"status", "200"}}));
    m.add("trollproxy_tokens_total", 2000);
    m.set("trollproxy_journal_pending", 3);
    m.set("trollproxy_journal_pending", 0);
    std::string t = m.render();
    CHECK(has(t, "# HELP trollproxy_requests_total Requests answered, by route and HTTP status.\n"
                 "# TYPE trollproxy_requests_total counter\n"
                 "trollproxy_requests_total{route=\"/v1/messages\",status=\"200\"} 2\n"));
    CHECK(has(t, "# TYPE trollproxy_tokens_total counter\ntrollproxy_tokens_total 2000\n"));
    CHECK(has(t, "# TYPE trollproxy_journal_pending gauge\ntrollproxy_journal_pending 0\n"));
    CHECK_FALSE(has(t, "e+"));
    CHECK_FALSE(has(t, "2000.0"));
}

TEST_CASE("an unknown family still gets HELP and TYPE") {
    Metrics m;
    m.add("something_new_total", 1.5);
    CHECK(has(m.render(), "# HELP something_new_total A trollproxy metric.\n"
                          "# TYPE something_new_total counter\nsomething_new_total 1.5\n"));
}

TEST_CASE("the latency histogram is complete, cumulative and has short bounds") {
    Metrics m;
    for (double s : {0.005, 0.25, 0.5, 75.0})
        m.observeLatency("/v1/messages", s);
    std::string t = m.render();
    const std::string b = "trollproxy_request_duration_seconds_bucket{route=\"/v1/messages\",le=";
    CHECK(has(t, "# TYPE trollproxy_request_duration_seconds histogram\n" + b + "\"0.005\"} 1\n"));
    CHECK(has(t, b + "\"0.005\"} 1\n" + b + "\"0.01\"} 1\n" + b + "\"0.025\"} 1\n" + b +
                     "\"0.05\"} 1\n" + b + "\"0.1\"} 1\n" + b + "\"0.25\"} 2\n" + b +
                     "\"0.5\"} 3\n" + b + "\"1\"} 3\n" + b + "\"2.5\"} 3\n" + b + "\"5\"} 3\n" + b +
                     "\"10\"} 3\n" + b + "\"60\"} 3\n" + b +
                     "\"+Inf\"} 4\n"
                     "trollproxy_request_duration_seconds_sum{route=\"/v1/messages\"} 75.755\n"
                     "trollproxy_request_duration_seconds_count{route=\"/v1/messages\"} 4\n"));
    CHECK_FALSE(has(t, "0000000"));
}

TEST_CASE("label values are escaped, in series and in the histogram's route") {
    CHECK(Metrics::series("a_total", {{"model", "x\"y\\z\nw"}, {"pool", "p"}}) ==
          "a_total{model=\"x\\\"y\\\\z\\nw\",pool=\"p\"}");
    CHECK(Metrics::series("a_total", {}) == "a_total");
    Metrics m;
    m.observeLatency("/odd\"route", 1);
    CHECK(
        has(m.render(), "trollproxy_request_duration_seconds_count{route=\"/odd\\\"route\"} 1\n"));
}

TEST_CASE("what the service records: each family once, documented, typed, contiguous") {
    Metrics m;
    test::recordLikeTheService(m);
    std::string t = m.render();
    CHECK(has(t, "trollproxy_cost_usd_total{model=\"gpt-5\",pool=\"creditsNew\"} 0.0231\n"));
    CHECK(has(t, "trollproxy_cost_usd_total{model=\"claude-\\\"odd\\\"\\\\model\\nv2\",pool="
                 "\"credits\"} 0.0007095\n"));
    CHECK(has(t, "trollproxy_shortfall_usd_total{pool=\"credits\"} 0.00125\n"));
    CHECK(has(
        t,
        "trollproxy_upstream_key_state{endpoint=\"main\",key=\"0\",state=\"cooling_down\"} 1\n"));

    std::set<std::string> seen;
    std::string family, type;
    bool helpNext = false;
    for (const std::string& l : lines(t)) {
        CAPTURE(l);
        if (l.starts_with("# HELP ")) {
            family = l.substr(7, l.find(' ', 7) - 7);
            CHECK(seen.insert(family).second); // a family appears once
            CHECK_FALSE(Metrics::help(family).empty());
            helpNext = true;
            continue;
        }
        if (l.starts_with("# TYPE ")) {
            CHECK(helpNext);
            helpNext = false;
            CHECK(l.starts_with("# TYPE " + family + " "));
            type = l.substr(8 + family.size());
            if (type == "counter")
                CHECK(family.ends_with("_total"));
            else
                CHECK_FALSE(family.ends_with("_total"));
            continue;
        }
        std::string name = l.substr(0, l.find_first_of("{ "));
        if (type == "histogram")
            CHECK((name == family + "_bucket" || name == family + "_sum" ||
                   name == family + "_count"));
        else
            CHECK(name == family);
    }
    CHECK(seen == std::set<std::string>{
                      "trollproxy_cost_usd_total", "trollproxy_holds_expired_total",
                      "trollproxy_holds_released_at_start_total", "trollproxy_journal_pending",
                      "trollproxy_settlement_batches_total", "trollproxy_settlement_charges_total",
                      "trollproxy_settlement_flush_seconds_total",
                      "trollproxy_settlement_queue_depth", "trollproxy_journalled_charges_total",
                      "trollproxy_ledger_errors_total", "trollproxy_ledger_up",
                      "trollproxy_request_duration_seconds", "trollproxy_requests_total",
                      "trollproxy_shortfall_usd_total", "trollproxy_tokens_total",
                      "trollproxy_unrecorded_charges_total", "trollproxy_upstream_errors_total",
                      "trollproxy_upstream_key_state"});
}
