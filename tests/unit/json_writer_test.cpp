// Tests of core/json_writer: jsonQuote escapes, and JsonWriter's commas, colons and nesting.
#include <doctest/doctest.h>

#include "core/json_writer.hpp"

using namespace trollproxy::internal;

TEST_CASE("jsonQuote escapes quotes, backslashes and control characters") {
    CHECK(jsonQuote("") == R"("")");
    CHECK(jsonQuote("plain") == R"("plain")");
    CHECK(jsonQuote("say \"hi\"") == R"("say \"hi\"")");
    CHECK(jsonQuote("C:\\dir") == R"("C:\\dir")");
    CHECK(jsonQuote("a\nb\rc\td") == R"("a\nb\rc\td")");
    CHECK(jsonQuote(std::string_view("\x00\x01\x1f", 3)) == R"("\u0000\u0001\u001f")");
    CHECK(jsonQuote("\x7f/") == "\"\x7f/\"");               // DEL and '/' need no escape
    CHECK(jsonQuote("h\xc3\xa9llo") == "\"h\xc3\xa9llo\""); // UTF-8 passes through
}

TEST_CASE("JsonWriter: the documented example") {
    JsonWriter w;
    w.beginObject().field("id", "x").field("n", 3).endObject();
    CHECK(w.str() == R"({"id":"x","n":3})");
}

TEST_CASE("JsonWriter: empty containers") {
    JsonWriter a;
    a.beginObject().endObject();
    CHECK(a.str() == "{}");
    JsonWriter b;
    b.beginArray().endArray();
    CHECK(b.str() == "[]");
    JsonWriter c;
    c.beginArray().beginObject().endObject().beginArray().endArray().endArray();
    CHECK(c.str() == "[{},[]]");
}

TEST_CASE("JsonWriter: nesting places commas only between siblings") {
    JsonWriter w;
    w.beginObject()
        .field("object", "list")
        .key("data")
        .beginArray()
        .beginObject()
        .field("id", "a")
        .field("ok", true)
        .endObject()
        .beginObject()
        .field("id", "b")
        .field("ok", false)
        .key("none")
        .null()
        .endObject()
        .endArray()
        .field("count", std::int64_t{-9'000'000'000})
        .endObject();
    CHECK(w.str() == R"({"object":"list","data":[{"id":"a","ok":true},)"
                     R"({"id":"b","ok":false,"none":null}],"count":-9000000000})");
}

TEST_CASE("JsonWriter: arrays of scalars, and a top-level scalar") {
    JsonWriter w;
    w.beginArray().value(1).value("two").value(true).null().value(std::string("s")).endArray();
    CHECK(w.str() == R"([1,"two",true,null,"s"])");
    JsonWriter s;
    s.value("alone");
    CHECK(s.str() == R"("alone")");
}

TEST_CASE("JsonWriter: keys and values are escaped") {
    JsonWriter w;
    w.beginObject().field("k\"ey", "v\\al\n").endObject();
    CHECK(w.str() == R"({"k\"ey":"v\\al\n"})");
}

TEST_CASE("JsonWriter: raw JSON goes in verbatim, separated like any value") {
    JsonWriter w;
    w.beginObject().key("cost").raw("0.023100000").key("doc").raw(R"({"a":[1]})").endObject();
    CHECK(w.str() == R"({"cost":0.023100000,"doc":{"a":[1]}})");
    JsonWriter a;
    a.beginArray().raw("1.5").raw("2e3").endArray();
    CHECK(a.str() == "[1.5,2e3]");
}

TEST_CASE("JsonWriter: take() moves the text out") {
    JsonWriter w;
    w.beginArray().value(7).endArray();
    std::string text = w.take();
    CHECK(text == "[7]");
    CHECK(w.str().empty());
}
