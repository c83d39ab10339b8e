// Tests of core/json_locate: checkJsonSyntax's verdict, line, column and reason.
#include <doctest/doctest.h>

#include <string>

#include "core/json_locate.hpp"

using namespace trollproxy::internal;

namespace {

// The error for text that must be invalid.
JsonSyntaxError errorOf(std::string_view text) {
    JsonSyntaxError e;
    CHECK_FALSE(checkJsonSyntax(text, e));
    return e;
}

} // namespace

TEST_CASE("valid JSON passes and leaves the error untouched") {
    for (std::string_view ok : {R"({})", R"([])", R"("s")", "0", "-1.5e+3", "true", "null",
                                " \t\r\n{\"a\": [1, 2.0, -0, \"\\u00e9\\n\", {\"b\": null}]}\n",
                                R"({"esc":"\"\\\/\b\f\n\r\t"})"}) {
        CAPTURE(ok);
        JsonSyntaxError e;
        e.reason = "unchanged";
        CHECK(checkJsonSyntax(ok, e));
        CHECK(e.reason == "unchanged");
    }
}

TEST_CASE("line and column are 1-based, columns in bytes") {
    auto e = errorOf("{\n  \"model\": \"x\",\n  \"max_tokens\": 10,\n}");
    CHECK(e.line == 4);
    CHECK(e.column == 1);
    CHECK(e.reason == "expected a string key");

    e = errorOf(R"({"a" 1})");
    CHECK(e.line == 1);
    CHECK(e.column == 6);
    CHECK(e.reason == "expected ':' after a key");

    e = errorOf("[1,\n\xc3\xa9]"); // é is two bytes, and not a value
    CHECK(e.line == 2);
    CHECK(e.column == 1);
    CHECK(e.reason == "unexpected character");
}

TEST_CASE("reasons for each kind of mistake") {
    struct Case {
        std::string_view text;
        std::size_t column;
        const char* reason;
    };
    const Case cases[] = {
        {"", 1, "unexpected end of input"},
        {"[1,2", 5, "unexpected end of input"},
        {"[1 2]", 4, "expected ',' or ']'"},
        {R"({"a":1 "b":2})", 8, "expected ',' or '}'"},
        {R"({"a":1,)", 8, "unexpected end of input"},
        {"tru", 1, "invalid literal"},
        {"nul", 1, "invalid literal"},
        {"{} x", 4, "unexpected text after the JSON value"},
        {R"("abc)", 5, "unterminated string"},
        {"\"a\tb\"", 3, "control character in a string"},
        {R"("\x")", 3, "bad escape in a string"},
        {R"("\u12g4")", 3, "bad \\u escape"},
        {"1.", 3, "invalid number"},
        {"1e+", 4, "invalid number"},
        {"-", 2, "unexpected character"},
        {"'a'", 1, "unexpected character"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.text);
        auto e = errorOf(c.text);
        CHECK(e.line == 1);
        CHECK(e.column == c.column);
        CHECK(e.reason == c.reason);
    }
}

TEST_CASE("nesting deeper than 1024 is refused, 1024 is not") {
    std::string ok = std::string(1025, '[') + std::string(1025, ']');
    JsonSyntaxError e;
    CHECK(checkJsonSyntax(ok, e));
    std::string deep = std::string(1026, '[') + std::string(1026, ']');
    e = errorOf(deep);
    CHECK(e.reason == "nesting too deep");
    CHECK(e.column == 1026);
}
