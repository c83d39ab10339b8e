// The floor of trollproxy's stack: the least a cpp-httplib server that forwards with
// libcurl does per request. POST bodies go to the upstream with its key and the
// answer comes back whole; no key check, no billing, no log, no streaming.
// Measured next to trollproxy by tests/bench/floor.py.
//   floor-proxy UPSTREAM_BASE_URL UPSTREAM_KEY THREADS
// Prints "listening on 127.0.0.1:PORT".
#include <cstdio>
#include <cstdlib>
#include <string>

#include <curl/curl.h>
#include <httplib.h>

namespace {

std::size_t collect(char* data, std::size_t size, std::size_t n, void* out) {
    static_cast<std::string*>(out)->append(data, size * n);
    return size * n;
}

// One easy handle per server thread: its connection to the upstream is kept.
struct Forwarder {
    CURL* easy = curl_easy_init();
    ~Forwarder() { curl_easy_cleanup(easy); }

    long post(const std::string& url, const std::string& auth, const std::string& body,
              std::string& answer) {
        curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
        headers = curl_slist_append(headers, auth.c_str());
        headers = curl_slist_append(headers, "Expect:");
        curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body.data());
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &collect);
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, &answer);
        long status = 502;
        if (curl_easy_perform(easy) == CURLE_OK)
            curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        curl_slist_free_all(headers);
        return status;
    }
};

} // namespace

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: floor-proxy UPSTREAM_BASE_URL UPSTREAM_KEY THREADS\n");
        return 2;
    }
    const std::string base = argv[1];
    const std::string auth = std::string("Authorization: Bearer ") + argv[2];
    const auto threads = static_cast<std::size_t>(std::atoi(argv[3]));
    curl_global_init(CURL_GLOBAL_DEFAULT);
    httplib::Server server;
    // Without it an answer's head and body, two writes, wait for a delayed ACK.
    server.set_tcp_nodelay(true);
    server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server.Post("/.*", [&](const httplib::Request& req, httplib::Response& res) {
        thread_local Forwarder forwarder;
        std::string answer;
        res.status = static_cast<int>(forwarder.post(base + req.path, auth, req.body, answer));
        res.set_content(std::move(answer), "application/json");
    });
    int port = server.bind_to_any_port("127.0.0.1");
    if (port < 0)
        return 1;
    std::printf("listening on 127.0.0.1:%d\n", port);
    std::fflush(stdout);
    server.listen_after_bind();
    return 0;
}
