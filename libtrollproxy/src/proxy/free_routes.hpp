// Routes that are never charged: Anthropic's count_tokens and stored responses.
#pragma once

#include <memory>
#include <string>

#include "proxy/exchange.hpp"

namespace trollproxy::internal {

/// POST /v1/messages/count_tokens: authenticated, rate limited, forwarded, free.
HttpResponse serveCountTokens(const ExchangeParts& parts, std::shared_ptr<const Routing> routing,
                              const HttpRequest& request);

/// GET or DELETE /v1/responses/{id}: only for the user who created it; free.
HttpResponse serveResponseLookup(const ExchangeParts& parts, std::shared_ptr<const Routing> routing,
                                 const HttpRequest& request, const std::string& id);

} // namespace trollproxy::internal
