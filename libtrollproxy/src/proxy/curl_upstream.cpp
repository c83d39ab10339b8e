// Upstream over libcurl's multi interface: headers first, then the body piece by piece.
//
// Each thread drives its own multi handle, so transfers need no locks and the
// multi handle's connection cache keeps upstream connections alive between the
// requests that a worker thread serves. The handle runs on libcurl's socket
// interface: the thread polls the sockets libcurl names and tells it which one
// is ready, so libcurl reads at once instead of polling each socket again
// (curl_multi_perform looks at every socket with a poll of its own, three more
// system calls per answer and per streamed event).
#include "trollproxy/upstream.hpp"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <vector>

#include <curl/curl.h>
#include <poll.h>

#include "core/text.hpp"

namespace trollproxy {

namespace {

using Clock = std::chrono::steady_clock;

// A thread's multi handle, the sockets and the timer libcurl asks it to watch,
// and easy handles kept for reuse: curl_easy_init() allocates and sets up a
// whole handle, curl_easy_reset() only clears options.
struct ThreadMulti {
    CURLM* multi = nullptr;
    std::vector<CURL*> spare;
    std::vector<pollfd> sockets; // events: what libcurl waits for on each
    std::vector<pollfd> ready;   // pump()'s copy of `sockets`, kept to save an allocation
    bool timerSet = false;
    Clock::time_point timerAt;

    ThreadMulti() {
        multi = curl_multi_init();
        curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, 16L);
        curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &ThreadMulti::onSocket);
        curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, this);
        curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &ThreadMulti::onTimer);
        curl_multi_setopt(multi, CURLMOPT_TIMERDATA, this);
    }
    ~ThreadMulti() {
        for (CURL* e : spare)
            curl_easy_cleanup(e);
        curl_multi_cleanup(multi);
    }
    ThreadMulti(const ThreadMulti&) = delete;
    ThreadMulti& operator=(const ThreadMulti&) = delete;

    static int onSocket(CURL*, curl_socket_t fd, int what, void* self, void*) {
        auto& list = static_cast<ThreadMulti*>(self)->sockets;
        auto it =
            std::find_if(list.begin(), list.end(), [fd](const pollfd& p) { return p.fd == fd; });
        if (what == CURL_POLL_REMOVE) {
            if (it != list.end())
                list.erase(it);
            return 0;
        }
        short events = 0;
        if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
            events |= POLLIN;
        if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
            events |= POLLOUT;
        if (it == list.end())
            list.push_back({fd, events, 0});
        else
            it->events = events;
        return 0;
    }

    static int onTimer(CURLM*, long timeoutMs, void* self) {
        auto* t = static_cast<ThreadMulti*>(self);
        t->timerSet = timeoutMs >= 0;
        if (t->timerSet)
            t->timerAt = Clock::now() + std::chrono::milliseconds(timeoutMs);
        return 0;
    }

    bool timerDue(Clock::time_point now) const { return timerSet && now >= timerAt; }

    // Lets libcurl act on a ready socket, or on its timer (CURL_SOCKET_TIMEOUT).
    void act(curl_socket_t fd, int bits) {
        if (fd == CURL_SOCKET_TIMEOUT)
            timerSet = false;
        int running = 0;
        curl_multi_socket_action(multi, fd, bits, &running);
    }
};

ThreadMulti& threadMulti() {
    thread_local ThreadMulti holder;
    return holder;
}

CURL* takeEasy() {
    auto& spare = threadMulti().spare;
    if (spare.empty())
        return curl_easy_init();
    CURL* e = spare.back();
    spare.pop_back();
    return e;
}

void giveEasy(CURL* e) {
    auto& spare = threadMulti().spare;
    if (spare.size() >= 4) {
        curl_easy_cleanup(e);
        return;
    }
    curl_easy_reset(e);
    spare.push_back(e);
}

class CurlTransfer final : public UpstreamTransfer {
public:
    CurlTransfer(const UpstreamRequest& req, const UpstreamSettings& settings)
        : settings_(settings), body_(req.body), multi_(threadMulti().multi) {
        easy_ = takeEasy();
        for (const auto& [name, value] : req.headers)
            headerList_ = curl_slist_append(headerList_, (name + ": " + value).c_str());
        // No "Expect: 100-continue" round trip for large bodies.
        headerList_ = curl_slist_append(headerList_, "Expect:");
        curl_easy_setopt(easy_, CURLOPT_URL, req.url.c_str());
        if (req.method == "GET") {
            curl_easy_setopt(easy_, CURLOPT_HTTPGET, 1L);
        } else {
            curl_easy_setopt(easy_, CURLOPT_POST, 1L);
            curl_easy_setopt(easy_, CURLOPT_POSTFIELDS, body_.data());
            curl_easy_setopt(easy_, CURLOPT_POSTFIELDSIZE_LARGE,
                             static_cast<curl_off_t>(body_.size()));
            if (req.method != "POST")
                curl_easy_setopt(easy_, CURLOPT_CUSTOMREQUEST, req.method.c_str());
        }
        curl_easy_setopt(easy_, CURLOPT_HTTPHEADER, headerList_);
        curl_easy_setopt(easy_, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
        // Ask for the body as is; an upstream that compresses anyway is decoded
        // (libcurl decodes only with this set), so usage and relay see plain bytes.
        curl_easy_setopt(easy_, CURLOPT_ACCEPT_ENCODING, "identity");
        curl_easy_setopt(easy_, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(easy_, CURLOPT_CONNECTTIMEOUT_MS,
                         static_cast<long>(settings.connectTimeoutMs));
        curl_easy_setopt(easy_, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(easy_, CURLOPT_TCP_NODELAY, 1L);
        curl_easy_setopt(easy_, CURLOPT_WRITEFUNCTION, &CurlTransfer::onWrite);
        curl_easy_setopt(easy_, CURLOPT_WRITEDATA, this);
        curl_easy_setopt(easy_, CURLOPT_HEADERFUNCTION, &CurlTransfer::onHeader);
        curl_easy_setopt(easy_, CURLOPT_HEADERDATA, this);
        curl_easy_setopt(easy_, CURLOPT_PRIVATE, this);
        curl_multi_add_handle(multi_, easy_);
        attached_ = true;
    }

    ~CurlTransfer() override {
        detach();
        giveEasy(easy_);
        curl_slist_free_all(headerList_);
    }

    // Runs until the response headers are in; an error if none came.
    Result<void> awaitHeaders() {
        auto deadline = Clock::now() + std::chrono::milliseconds(settings_.firstByteTimeoutMs);
        while (!headersDone_ && !done_) {
            if (Clock::now() >= deadline) {
                detach();
                return Error{ErrorCode::Timeout, "upstream sent no response in time"};
            }
            pump(deadline);
        }
        if (!headersDone_) {
            bool timeout = result_ == CURLE_OPERATION_TIMEDOUT;
            return Error{timeout ? ErrorCode::Timeout : ErrorCode::Unavailable,
                         std::string("upstream request failed: ") + curl_easy_strerror(result_)};
        }
        return {};
    }

    int status() const override { return status_; }
    const HeaderList& headers() const override { return headers_; }
    std::string header(std::string_view name) const override {
        for (const auto& [k, v] : headers_) {
            if (k == name)
                return v;
        }
        return {};
    }

    Result<bool> read(std::string& out) override {
        auto deadline = Clock::now() + std::chrono::milliseconds(settings_.idleTimeoutMs);
        for (;;) {
            if (!pending_.empty()) {
                out.append(pending_);
                pending_.clear();
                return true;
            }
            if (cancelled_)
                return false;
            if (done_) {
                if (result_ != CURLE_OK)
                    return Error{ErrorCode::Unavailable, std::string("upstream transfer broke: ") +
                                                             curl_easy_strerror(result_)};
                return false;
            }
            if (Clock::now() >= deadline) {
                detach();
                return Error{ErrorCode::Timeout, "upstream went idle"};
            }
            pump(deadline);
        }
    }

    void cancel() override {
        cancelled_ = true;
        detach();
    }

private:
    static std::size_t onWrite(char* data, std::size_t size, std::size_t n, void* self) {
        static_cast<CurlTransfer*>(self)->pending_.append(data, size * n);
        return size * n;
    }

    static std::size_t onHeader(char* data, std::size_t size, std::size_t n, void* self) {
        auto* t = static_cast<CurlTransfer*>(self);
        std::string_view line(data, size * n);
        while (!line.empty() && (line.back() == '\n' || line.back() == '\r'))
            line.remove_suffix(1);
        if (line.rfind("HTTP/", 0) == 0) {
            // A new status line (after 1xx, too) starts a new header block.
            t->headers_.clear();
            auto sp = line.find(' ');
            t->status_ = sp == std::string_view::npos
                             ? 0
                             : std::atoi(std::string(line.substr(sp + 1, 3)).c_str());
        } else if (line.empty()) {
            if (t->status_ >= 200)
                t->headersDone_ = true;
        } else if (auto colon = line.find(':'); colon != std::string_view::npos) {
            std::string_view value = line.substr(colon + 1);
            while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
                value.remove_prefix(1);
            t->headers_.emplace_back(internal::asciiLower(line.substr(0, colon)),
                                     std::string(value));
        }
        return size * n;
    }

    // Waits (until `deadline` at most) for a socket libcurl watches or for its
    // timer, lets libcurl act on what is ready, and marks finished transfers.
    void pump(Clock::time_point deadline) {
        ThreadMulti& tm = threadMulti();
        auto now = Clock::now();
        if (tm.timerDue(now)) {
            tm.act(CURL_SOCKET_TIMEOUT, 0);
        } else {
            auto until = tm.timerSet ? std::min(deadline, tm.timerAt) : deadline;
            // Rounded up, so that a timer a fraction of a millisecond away is due after the wait.
            const auto waitMs = std::chrono::ceil<std::chrono::milliseconds>(until - now).count();
            const int wait = static_cast<int>(std::clamp<long long>(waitMs, 0, 1000));
            // A copy: libcurl changes the list while it acts.
            tm.ready.assign(tm.sockets.begin(), tm.sockets.end());
            int n = ::poll(tm.ready.data(), tm.ready.size(), wait);
            if (n > 0) {
                for (const pollfd& p : tm.ready) {
                    int bits = 0;
                    if (p.revents & (POLLIN | POLLHUP))
                        bits |= CURL_CSELECT_IN;
                    if (p.revents & POLLOUT)
                        bits |= CURL_CSELECT_OUT;
                    if (p.revents & (POLLERR | POLLNVAL))
                        bits |= CURL_CSELECT_ERR;
                    if (bits)
                        tm.act(p.fd, bits);
                }
            } else if (n == 0 && tm.timerDue(Clock::now())) {
                tm.act(CURL_SOCKET_TIMEOUT, 0);
            }
        }
        int left = 0;
        while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            CurlTransfer* t = nullptr;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &t);
            if (t) {
                t->done_ = true;
                t->result_ = msg->data.result;
            }
        }
    }

    void detach() {
        if (attached_) {
            curl_multi_remove_handle(multi_, easy_);
            attached_ = false;
        }
        done_ = true;
    }

    UpstreamSettings settings_;
    std::string body_;
    CURLM* multi_;
    CURL* easy_ = nullptr;
    curl_slist* headerList_ = nullptr;
    std::string pending_;
    HeaderList headers_;
    int status_ = 0;
    bool headersDone_ = false;
    bool done_ = false;
    bool attached_ = false;
    bool cancelled_ = false;
    CURLcode result_ = CURLE_OK;
};

class CurlUpstream final : public Upstream {
public:
    explicit CurlUpstream(const UpstreamSettings& settings) : settings_(settings) {
        static std::once_flag once;
        std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
    }

    Result<std::unique_ptr<UpstreamTransfer>> start(const UpstreamRequest& request) override {
        auto t = std::make_unique<CurlTransfer>(request, settings_);
        if (auto r = t->awaitHeaders(); !r)
            return r.error();
        return std::unique_ptr<UpstreamTransfer>(std::move(t));
    }

private:
    UpstreamSettings settings_;
};

} // namespace

std::unique_ptr<Upstream> makeCurlUpstream(const UpstreamSettings& settings) {
    return std::make_unique<CurlUpstream>(settings);
}

} // namespace trollproxy
