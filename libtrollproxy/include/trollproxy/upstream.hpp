// Upstream: sends one HTTP request to a provider and reads the answer as it arrives.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trollproxy/result.hpp"

namespace trollproxy {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

/// Timeouts for upstream transfers. LLM answers can take minutes.
struct UpstreamSettings {
    std::int64_t connectTimeoutMs = 10'000;
    std::int64_t firstByteTimeoutMs = 300'000; ///< until the response headers
    std::int64_t idleTimeoutMs = 300'000;      ///< between two pieces of the body
};

/// One request to send: a POST unless `method` says otherwise (GET sends no body).
struct UpstreamRequest {
    std::string url;
    HeaderList headers;
    std::string body;
    std::string method = "POST";
};

/// An answer being received. Use it on the thread that started it.
class UpstreamTransfer {
public:
    virtual ~UpstreamTransfer() = default;

    /// The response status (after start() returned this transfer).
    virtual int status() const = 0;
    /// Response headers, names lower-cased.
    virtual const HeaderList& headers() const = 0;
    /// The value of a response header, or "" (name in lower case).
    virtual std::string header(std::string_view name) const = 0;

    /// Waits for the next piece of the body and appends it to `out`. Returns
    /// false at the normal end. An error means the transfer broke (cut, idle
    /// timeout); what was appended before stays valid.
    virtual Result<bool> read(std::string& out) = 0;

    /// Stops the transfer (the client went away); later reads return false.
    virtual void cancel() = 0;
};

/// Starts transfers. Thread-safe; connections are kept alive and reused.
class Upstream {
public:
    virtual ~Upstream() = default;

    /// Sends the request and waits for the response headers. Errors:
    /// Unavailable (connect or send failure), Timeout (no answer in time).
    virtual Result<std::unique_ptr<UpstreamTransfer>> start(const UpstreamRequest& request) = 0;
};

/// The libcurl implementation.
std::unique_ptr<Upstream> makeCurlUpstream(const UpstreamSettings& settings);

} // namespace trollproxy
