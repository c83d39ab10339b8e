// The ProxyService behind cpp-httplib: admission from the request head, then the whole request.
#include "routes.hpp"

#include <exception>
#include <memory>
#include <string>

namespace trollproxy::server {

namespace {

/// What the expect or pre-routing handler left for the handler: the caller
/// admit() authenticated (may be null on routes that need no key).
struct Admitted {
    std::shared_ptr<const Account> account;
};

// Adapts httplib's sink to the library's writer.
class SinkWriter final : public ResponseWriter {
public:
    explicit SinkWriter(httplib::DataSink& sink) : sink_(sink) {}
    bool write(std::string_view bytes) override {
        return sink_.is_writable() && sink_.write(bytes.data(), bytes.size());
    }

private:
    httplib::DataSink& sink_;
};

HttpResponse internalError() {
    HttpResponse r;
    r.status = 500;
    r.body =
        R"({"error":{"message":"internal error","type":"server_error","param":null,"code":null}})";
    return r;
}

HttpRequest toHttpRequest(const httplib::Request& req, bool takeBody) {
    HttpRequest in;
    in.method = req.method;
    in.path = req.path;
    in.remoteAddr = req.remote_addr;
    // The body is moved, not copied (an agent's runs to hundreds of KB): the
    // Request is httplib's own non-const object, and after the handler httplib
    // reads only its method, headers and ranges (cpp-httplib 0.11,
    // write_response_core); no logger is set.
    if (takeBody)
        in.body = std::move(const_cast<httplib::Request&>(req).body);
    for (const auto& [k, v] : req.headers) {
        // httplib adds the socket's addresses as pseudo headers.
        if (k != "REMOTE_ADDR" && k != "REMOTE_PORT" && k != "LOCAL_ADDR" && k != "LOCAL_PORT")
            in.headers.emplace_back(k, v);
    }
    return in;
}

void toHttplib(HttpResponse out, httplib::Response& res) {
    res.status = out.status;
    for (const auto& [k, v] : out.headers)
        res.set_header(k, v);
    if (!out.stream) {
        res.set_content(std::move(out.body), out.contentType);
        return;
    }
    res.set_chunked_content_provider(
        out.contentType, [fn = std::move(out.stream)](std::size_t, httplib::DataSink& sink) {
            SinkWriter writer(sink);
            fn(writer);
            sink.done();
            return true;
        });
}

// Runs admit() on the head of the request being served on this thread. Returns
// false when it was refused; `res` then holds the refusal.
bool admit(ProxyService& service, const httplib::Request& req, httplib::Response& res) {
    RequestScope* scope = GuardedServer::currentRequest();
    if (scope && scope->user.has_value())
        return true; // already admitted by the 100-continue handler
    Admission a;
    try {
        a = service.admit(toHttpRequest(req, false));
    } catch (const std::exception&) {
        a.refusal = internalError();
    }
    if (a.refusal) {
        toHttplib(std::move(*a.refusal), res);
        if (scope)
            scope->closeConnection = true; // the body, if any, stays unread
        return false;
    }
    if (scope)
        scope->user = Admitted{std::move(a.account)};
    return true;
}

} // namespace

void routeProxy(GuardedServer& server, ProxyService& service) {
    // A client that waits for "100 Continue" is refused before it sends its body.
    server.set_expect_100_continue_handler(
        [&service](const httplib::Request& req, httplib::Response& res) {
            return admit(service, req, res) ? 100 : res.status;
        });
    server.set_pre_routing_handler([&service](const httplib::Request& req, httplib::Response& res) {
        return admit(service, req, res) ? httplib::Server::HandlerResponse::Unhandled
                                        : httplib::Server::HandlerResponse::Handled;
    });
    auto handler = [&service](const httplib::Request& req, httplib::Response& res) {
        HttpRequest in = toHttpRequest(req, true);
        if (RequestScope* scope = GuardedServer::currentRequest()) {
            if (const auto* admitted = std::any_cast<Admitted>(&scope->user))
                in.admitted = admitted->account;
        }
        toHttplib(service.handle(in), res);
    };
    // Instead of httplib's 500 with the exception's text in a header.
    server.set_exception_handler([](const httplib::Request&, httplib::Response& res,
                                    std::exception_ptr) { toHttplib(internalError(), res); });
    server.Post("/.*", handler);
    server.Get("/.*", handler);
    server.Put("/.*", handler);
    server.Delete("/.*", handler);
}

void routeMetrics(GuardedServer& server, const ProxyService& service) {
    server.Get("/metrics", [&service](const httplib::Request&, httplib::Response& res) {
        res.set_content(service.metricsText(), "text/plain; version=0.0.4");
    });
}

} // namespace trollproxy::server
