// Relay: reads an upstream answer to the client, whole or as a stream, and says what to bill.
#pragma once

#include <atomic>
#include <string>

#include "proxy/hold.hpp"
#include "trollproxy/clock.hpp"
#include "trollproxy/proxy.hpp"
#include "trollproxy/upstream.hpp"
#include "trollproxy/usage.hpp"

namespace trollproxy::internal {

/// The usage to bill for what was served, and why it is not the reported one.
struct ServedUsage {
    bool servedNothing = false; ///< nothing reached the client: no charge
    Usage usage;
    std::string note;       ///< for the log: why the usage was estimated
    std::string responseId; ///< Responses API: the id the upstream gave the answer
};

/// A whole (non-streamed) answer, read.
struct WholeAnswer {
    bool broke = false; ///< the transfer failed: nothing is served
    std::string error;  ///< why, when it broke
    std::string body;
    ServedUsage served;
};

/// Reads an answer to the end; its usage, or an estimate from the bytes when
/// the usage is missing or unbelievable (never free once served).
WholeAnswer readWholeAnswer(UpstreamTransfer& transfer, ApiFormat format, std::int64_t promptBytes);

/// When a shutdown's grace period ends (steady ms, 0: not shutting down).
struct ShutdownDeadline {
    const std::atomic<std::int64_t>* steadyMs = nullptr;
    const Clock* clock = nullptr;
    bool passed() const;
};

/// How to pass a stream through.
struct StreamRelay {
    ApiFormat format = ApiFormat::OpenAI;
    bool isSse = true;       ///< false: the upstream sent something else; bytes passed as is
    bool stripUsage = false; ///< drop the usage-only chunk the client did not ask for
    std::int64_t promptBytes = 0;
    std::int64_t holdTtlMs = 0;
    Hold* hold = nullptr; ///< renewed while the stream runs
    ShutdownDeadline deadline;
};

/// Passes the answer event by event as it arrives; stops when the client
/// leaves or the shutdown grace ends. Returns what to bill.
ServedUsage relayStream(const StreamRelay& how, UpstreamTransfer& transfer, ResponseWriter& writer);

} // namespace trollproxy::internal
