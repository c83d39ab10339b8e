// Error answers in the caller's API format, with one status-to-type mapping.
#pragma once

#include <string>
#include <string_view>

#include "trollproxy/proxy.hpp"
#include "trollproxy/usage.hpp"

namespace trollproxy::internal {

/// An error response: OpenAI shape `{"error":{...}}` or Anthropic shape
/// `{"type":"error","error":{...}}`, by format. `code` is OpenAI's `code`.
HttpResponse apiError(ApiFormat format, int status, std::string_view message,
                      std::string_view code = {});

} // namespace trollproxy::internal
