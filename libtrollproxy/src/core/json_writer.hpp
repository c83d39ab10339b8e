// JsonWriter: builds compact JSON text (error bodies, log lines, /v1/models, the journal).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace trollproxy::internal {

/// `s` as a JSON string literal, quotes included; control characters escaped.
std::string jsonQuote(std::string_view s);

/// Appends JSON tokens to a string, placing commas and colons itself.
/// Misuse (a value where a key is due) is a programming error, not checked.
///
///   JsonWriter w;
///   w.beginObject().field("id", "x").field("n", 3).endObject();
///   w.str() == R"({"id":"x","n":3})"
class JsonWriter {
public:
    JsonWriter& beginObject();
    JsonWriter& endObject();
    JsonWriter& beginArray();
    JsonWriter& endArray();

    /// The next member's name (inside an object).
    JsonWriter& key(std::string_view name);

    JsonWriter& value(std::string_view s);
    JsonWriter& value(const char* s) { return value(std::string_view(s)); }
    JsonWriter& value(const std::string& s) { return value(std::string_view(s)); }
    JsonWriter& value(std::int64_t n);
    JsonWriter& value(int n) { return value(static_cast<std::int64_t>(n)); }
    JsonWriter& value(bool b);
    JsonWriter& null();
    /// Already-encoded JSON (a number in its exact form, an embedded document).
    JsonWriter& raw(std::string_view json);

    /// key(name) then value(v).
    template <typename T> JsonWriter& field(std::string_view name, const T& v) {
        key(name);
        return value(v);
    }

    const std::string& str() const { return out_; }
    std::string take() { return std::move(out_); }

private:
    void separate();

    std::string out_;
    std::vector<bool> first_; // per open container: nothing written in it yet
    bool afterKey_ = false;
};

} // namespace trollproxy::internal
