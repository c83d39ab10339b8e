// Result<T>: a value or an Error, for outcomes that are expected on the request path.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace trollproxy {

/// What went wrong, coarsely; the message says the rest.
enum class ErrorCode {
    InvalidArgument, ///< bad input from a user, a client or a file
    ParseError,      ///< malformed JSON or text
    NotFound,        ///< a named thing does not exist
    Unavailable,     ///< a backing service (database, upstream) cannot be reached
    Timeout,         ///< a backing service did not answer in time
    Conflict,        ///< the operation clashes with the current state
    Internal,        ///< a bug or an unexpected system failure
};

/// A printable name for an ErrorCode ("invalid_argument", ...).
const char* errorCodeName(ErrorCode code) noexcept;

/// An expected failure: a code and a message for humans.
struct Error {
    ErrorCode code;
    std::string message;
};

/// Holds either a T or an Error. Check ok() before value().
template <typename T> class [[nodiscard]] Result {
public:
    Result(T value) : v_(std::move(value)) {}
    Result(Error error) : v_(std::move(error)) {}

    bool ok() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return ok(); }

    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    const Error& error() const { return std::get<1>(v_); }

    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T&& operator*() && { return std::move(*this).value(); }

private:
    std::variant<T, Error> v_;
};

/// Result of an operation that yields nothing but may fail.
template <> class [[nodiscard]] Result<void> {
public:
    Result() = default;
    Result(Error error) : error_(std::move(error)), ok_(false) {}

    bool ok() const noexcept { return ok_; }
    explicit operator bool() const noexcept { return ok_; }
    const Error& error() const { return error_; }

private:
    Error error_{ErrorCode::Internal, {}};
    bool ok_ = true;
};

} // namespace trollproxy
