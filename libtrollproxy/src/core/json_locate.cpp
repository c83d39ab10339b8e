// A small strict JSON grammar walker; used only to explain a parse failure.
#include "core/json_locate.hpp"

#include <cctype>
#include <cstdio>

namespace trollproxy::internal {

namespace {

class Checker {
public:
    explicit Checker(std::string_view t) : t_(t) {}

    bool run(JsonSyntaxError& err) {
        skipWs();
        bool ok = value(0) && (skipWs(), atEnd() || fail("unexpected text after the JSON value"));
        if (!ok) {
            err.line = 1;
            err.column = 1;
            for (std::size_t i = 0; i < failPos_ && i < t_.size(); ++i) {
                if (t_[i] == '\n') {
                    ++err.line;
                    err.column = 1;
                } else {
                    ++err.column;
                }
            }
            err.reason = reason_;
        }
        return ok;
    }

private:
    static constexpr int kMaxDepth = 1024;

    bool atEnd() const { return p_ >= t_.size(); }
    char peek() const { return atEnd() ? '\0' : t_[p_]; }
    bool fail(const char* why) {
        failPos_ = p_;
        reason_ = why;
        return false;
    }
    void skipWs() {
        while (!atEnd() && (t_[p_] == ' ' || t_[p_] == '\t' || t_[p_] == '\n' || t_[p_] == '\r'))
            ++p_;
    }
    bool literal(std::string_view word) {
        if (t_.substr(p_, word.size()) != word)
            return fail("invalid literal");
        p_ += word.size();
        return true;
    }
    bool value(int depth) {
        if (depth > kMaxDepth)
            return fail("nesting too deep");
        switch (peek()) {
        case '{':
            return object(depth);
        case '[':
            return array(depth);
        case '"':
            return string();
        case 't':
            return literal("true");
        case 'f':
            return literal("false");
        case 'n':
            return literal("null");
        case '\0':
            return fail("unexpected end of input");
        default:
            return number();
        }
    }
    bool object(int depth) {
        ++p_;
        skipWs();
        if (peek() == '}') {
            ++p_;
            return true;
        }
        for (;;) {
            skipWs();
            if (peek() != '"')
                return fail(atEnd() ? "unexpected end of input" : "expected a string key");
            if (!string())
                return false;
            skipWs();
            if (peek() != ':')
                return fail("expected ':' after a key");
            ++p_;
            skipWs();
            if (!value(depth + 1))
                return false;
            skipWs();
            if (peek() == ',') {
                ++p_;
                continue;
            }
            if (peek() == '}') {
                ++p_;
                return true;
            }
            return fail(atEnd() ? "unexpected end of input" : "expected ',' or '}'");
        }
    }
    bool array(int depth) {
        ++p_;
        skipWs();
        if (peek() == ']') {
            ++p_;
            return true;
        }
        for (;;) {
            skipWs();
            if (!value(depth + 1))
                return false;
            skipWs();
            if (peek() == ',') {
                ++p_;
                continue;
            }
            if (peek() == ']') {
                ++p_;
                return true;
            }
            return fail(atEnd() ? "unexpected end of input" : "expected ',' or ']'");
        }
    }
    bool string() {
        ++p_;
        while (!atEnd()) {
            auto c = static_cast<unsigned char>(t_[p_]);
            if (c == '"') {
                ++p_;
                return true;
            }
            if (c < 0x20)
                return fail("control character in a string");
            if (c == '\\') {
                ++p_;
                char e = peek();
                if (e == 'u') {
                    for (int i = 1; i <= 4; ++i) {
                        if (p_ + i >= t_.size() ||
                            !std::isxdigit(static_cast<unsigned char>(t_[p_ + i])))
                            return fail("bad \\u escape");
                    }
                    p_ += 5;
                    continue;
                }
                if (std::string_view("\"\\/bfnrt").find(e) == std::string_view::npos || e == '\0')
                    return fail("bad escape in a string");
                ++p_;
                continue;
            }
            ++p_;
        }
        return fail("unterminated string");
    }
    bool digits() {
        if (!std::isdigit(static_cast<unsigned char>(peek())))
            return fail("invalid number");
        while (std::isdigit(static_cast<unsigned char>(peek())))
            ++p_;
        return true;
    }
    bool number() {
        if (peek() == '-')
            ++p_;
        if (peek() == '0') {
            ++p_;
        } else if (!std::isdigit(static_cast<unsigned char>(peek()))) {
            return fail("unexpected character");
        } else {
            digits();
        }
        if (peek() == '.') {
            ++p_;
            if (!digits())
                return false;
        }
        if (peek() == 'e' || peek() == 'E') {
            ++p_;
            if (peek() == '+' || peek() == '-')
                ++p_;
            if (!digits())
                return false;
        }
        return true;
    }

    std::string_view t_;
    std::size_t p_ = 0;
    std::size_t failPos_ = 0;
    const char* reason_ = "";
};

} // namespace

bool checkJsonSyntax(std::string_view text, JsonSyntaxError& error) {
    return Checker(text).run(error);
}

} // namespace trollproxy::internal
