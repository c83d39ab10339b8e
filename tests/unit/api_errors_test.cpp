// Tests of proxy/api_errors: error bodies in each API's shape, and the status-to-type mapping.
#include <doctest/doctest.h>

#include "proxy/api_errors.hpp"

using namespace trollproxy;
using namespace trollproxy::internal;

namespace {

bool has(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

} // namespace

TEST_CASE("Anthropic errors: {type:error, error:{type, message}}") {
    HttpResponse r =
        apiError(ApiFormat::Anthropic, 402, "insufficient credits", "insufficient_credits");
    CHECK(r.status == 402);
    CHECK(r.contentType == "application/json");
    CHECK(r.body ==
          R"({"type":"error","error":{"type":"billing_error","message":"insufficient credits"}})");
    CHECK_FALSE(r.stream);
}

TEST_CASE("OpenAI errors: {error:{message, type, param, code}}") {
    HttpResponse r =
        apiError(ApiFormat::OpenAI, 503, "billing is temporarily unavailable; retry later",
                 "ledger_unavailable");
    CHECK(r.status == 503);
    CHECK(r.contentType == "application/json");
    CHECK(r.body == R"({"error":{"message":"billing is temporarily unavailable; retry later",)"
                    R"("type":"server_error","param":null,"code":"ledger_unavailable"}})");
    CHECK(
        apiError(ApiFormat::OpenAI, 401, "invalid key").body ==
        R"({"error":{"message":"invalid key","type":"authentication_error","param":null,"code":null}})");
}

TEST_CASE("Responses errors use the OpenAI shape") {
    HttpResponse r = apiError(ApiFormat::Responses, 429, "slow down", "rate_limit_exceeded");
    CHECK(r.status == 429);
    CHECK(r.body == R"({"error":{"message":"slow down","type":"rate_limit_error","param":null,)"
                    R"("code":"rate_limit_exceeded"}})");
}

TEST_CASE("messages are JSON-escaped") {
    std::string body = apiError(ApiFormat::Anthropic, 400, "bad \"model\"\\\n\x01").body;
    CHECK(has(body, R"("message":"bad \"model\"\\\n\u0001")"));
    CHECK(has(apiError(ApiFormat::OpenAI, 400, "a\"b", "c\"d").body,
              R"("message":"a\"b","type":"invalid_request_error","param":null,"code":"c\"d")"));
}

TEST_CASE("Anthropic error types by status") {
    const std::pair<int, const char*> expected[] = {
        {400, "invalid_request_error"},
        {401, "authentication_error"},
        {402, "billing_error"},
        {403, "permission_error"},
        {404, "not_found_error"},
        {413, "request_too_large"},
        {429, "rate_limit_error"},
        {503, "overloaded_error"},
        {529, "overloaded_error"},
        {500, "api_error"},
        {502, "api_error"},
        {422, "invalid_request_error"},
    };
    for (auto [status, type] : expected) {
        CAPTURE(status);
        HttpResponse r = apiError(ApiFormat::Anthropic, status, "m");
        CHECK(r.status == status);
        CHECK(r.body ==
              std::string(R"({"type":"error","error":{"type":")") + type + R"(","message":"m"}})");
    }
}

TEST_CASE("OpenAI and Responses error types by status") {
    const std::pair<int, const char*> expected[] = {
        {400, "invalid_request_error"}, {401, "authentication_error"},
        {402, "insufficient_quota"},    {403, "permission_error"},
        {404, "invalid_request_error"}, {413, "invalid_request_error"},
        {429, "rate_limit_error"},      {500, "server_error"},
        {502, "server_error"},          {503, "server_error"},
    };
    for (auto format : {ApiFormat::OpenAI, ApiFormat::Responses}) {
        for (auto [status, type] : expected) {
            CAPTURE(status);
            HttpResponse r = apiError(format, status, "m");
            CHECK(r.status == status);
            CHECK(r.body == std::string(R"({"error":{"message":"m","type":")") + type +
                                R"(","param":null,"code":null}})");
        }
    }
}
