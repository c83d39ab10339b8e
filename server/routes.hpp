// The ProxyService behind cpp-httplib: admission from the request head, then the whole request.
#pragma once

#include "http_server.hpp"
#include "trollproxy/proxy.hpp"

namespace trollproxy::server {

/// Serves `service` on every path of `server`. Each request is admitted from
/// its head first (route, key, declared length): a refusal is answered with
/// "Connection: close" before any body is read; otherwise the caller admit()
/// authenticated goes to handle() in HttpRequest::admitted.
void routeProxy(GuardedServer& server, ProxyService& service);

/// Serves GET /metrics (the service's Prometheus text) on `server`.
void routeMetrics(GuardedServer& server, const ProxyService& service);

} // namespace trollproxy::server
