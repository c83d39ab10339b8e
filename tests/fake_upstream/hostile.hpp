// Hostile answers of the test upstream: lying usage, "streams" that are not SSE,
// refusal text, unasked-for gzip, chosen error bodies and an echo of the credentials.
#pragma once

#include <httplib.h>

#include "wire.hpp"

namespace fake::hostile {

/// Answers the request when one of its headers asks for a hostile answer, and
/// returns true; otherwise leaves `res` alone and returns false. `a` is the
/// answer the request would get otherwise (model, chunks, usage).
///
///   x-fake-error-json: STATUS:BODY   answers STATUS with BODY (application/json);
///   x-fake-error-key: KEY            ... only when the request used upstream key KEY
///   x-fake-echo-auth: 1              a 400 whose message quotes the Authorization received
///   x-fake-usage-json: JSON          every usage object of the answer is JSON instead
///   x-fake-usage-midstream: 1        the usage comes before the content, none after it
///   x-fake-non-sse: 1                a stream request gets a whole application/json answer
///   x-fake-refusal: 1                OpenAI stream text in delta.refusal (= x-fake-delta-field:
///   refusal) x-fake-delta-field: NAME         OpenAI stream text in delta.NAME instead of
///   delta.content x-fake-gzip: 1 | corrupt         Content-Encoding: gzip whatever the request
///   accepts;
///                                    corrupt: the label on an uncompressed body
///
/// Hostile answers are not counted in /_stats "completed" or the served tokens.
bool answer(const httplib::Request& req, httplib::Response& res, const Answer& a, bool anthropic,
            bool stream);

} // namespace fake::hostile
