// Runs a fuzz target without libFuzzer: over its seed corpus, then over deterministic mutations of
// it.
//
//   fuzz_X_corpus [--mutations N] [--seed S] DIR_OR_FILE...
// Exits 0 when every input ran; a violated invariant aborts (and the sanitizers report).
// A single file argument reproduces one input (a crash found by libFuzzer, say).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

Bytes readFile(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// An exactly-sized heap copy, so that ASan sees a read past the end, as under libFuzzer.
void runOne(const Bytes& input) {
    std::unique_ptr<std::uint8_t[]> copy(new std::uint8_t[input.size()]);
    if (!input.empty())
        std::memcpy(copy.get(), input.data(), input.size());
    LLVMFuzzerTestOneInput(copy.get(), input.size());
}

class Random {
public:
    explicit Random(std::uint64_t seed) : s_(seed ? seed : 1) {}
    std::uint64_t next() {
        s_ ^= s_ << 13;
        s_ ^= s_ >> 7;
        s_ ^= s_ << 17;
        return s_;
    }
    std::size_t below(std::size_t n) { return n == 0 ? 0 : next() % n; }

private:
    std::uint64_t s_;
};

// Bytes and tokens that matter to SSE, JSON and the config and usage schemas.
const std::vector<std::string_view> kTokens = {"\n",
                                               "\r",
                                               "\r\n",
                                               "\n\n",
                                               "\r\r",
                                               ":",
                                               "data: ",
                                               "event: ",
                                               "data:",
                                               "id: 1",
                                               "retry: 5",
                                               "{",
                                               "}",
                                               "[",
                                               "]",
                                               ",",
                                               "\"",
                                               "\\",
                                               "\\u00e9",
                                               "\\ud800",
                                               "null",
                                               "true",
                                               "-",
                                               "0",
                                               "-1",
                                               "1e400",
                                               "0.000000001",
                                               "1.0000000001",
                                               "9223372036854775807",
                                               "9223372036854775808",
                                               "18446744073709551616",
                                               "-9223372036854775808",
                                               "9e15",
                                               "1e19",
                                               "\"usage\":",
                                               "\"prompt_tokens\":",
                                               "\"cached_tokens\":",
                                               "\"cache_read_input_tokens\":",
                                               "\"cache_creation_input_tokens\":",
                                               "\"input_tokens\":",
                                               "\"output_tokens\":",
                                               "\"message_start\"",
                                               "\"message_delta\"",
                                               "\"id\":",
                                               "\"id_aliases\":",
                                               "\"billing_upstream\":\"ohmygpt\"",
                                               "\"billing_multiplier\":",
                                               "\"models\":",
                                               "\"trollproxy\":",
                                               "\xc3\xa9",
                                               "\xff",
                                               std::string_view("\0", 1)};

Bytes mutate(const std::vector<Bytes>& corpus, Random& rnd) {
    Bytes b = corpus[rnd.below(corpus.size())];
    std::size_t rounds = 1 + rnd.below(4);
    for (std::size_t r = 0; r < rounds; ++r) {
        std::size_t at = rnd.below(b.size() + 1);
        switch (rnd.below(8)) {
        case 0: // flip a bit
            if (!b.empty())
                b[rnd.below(b.size())] ^= static_cast<std::uint8_t>(1u << rnd.below(8));
            break;
        case 1: // a random byte
            if (!b.empty())
                b[rnd.below(b.size())] = static_cast<std::uint8_t>(rnd.next());
            break;
        case 2: { // insert a token
            std::string_view t = kTokens[rnd.below(kTokens.size())];
            b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), t.begin(), t.end());
            break;
        }
        case 3: { // delete a range
            std::size_t n = std::min(b.size() - std::min(at, b.size()), 1 + rnd.below(16));
            b.erase(b.begin() + static_cast<std::ptrdiff_t>(at),
                    b.begin() + static_cast<std::ptrdiff_t>(at + n));
            break;
        }
        case 4: { // duplicate a range
            if (b.empty())
                break;
            std::size_t from = rnd.below(b.size());
            std::size_t n = std::min(b.size() - from, 1 + rnd.below(64));
            Bytes piece(b.begin() + static_cast<std::ptrdiff_t>(from),
                        b.begin() + static_cast<std::ptrdiff_t>(from + n));
            b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), piece.begin(), piece.end());
            break;
        }
        case 5: { // splice in part of another input
            const Bytes& o = corpus[rnd.below(corpus.size())];
            if (o.empty())
                break;
            std::size_t from = rnd.below(o.size());
            std::size_t n = std::min(o.size() - from, 1 + rnd.below(256));
            b.insert(b.begin() + static_cast<std::ptrdiff_t>(at),
                     o.begin() + static_cast<std::ptrdiff_t>(from),
                     o.begin() + static_cast<std::ptrdiff_t>(from + n));
            break;
        }
        case 6: // truncate
            b.resize(at);
            break;
        default: // change the control bytes some targets read first
            if (!b.empty())
                b[0] = static_cast<std::uint8_t>(rnd.next());
            if (b.size() > 1)
                b[1] = static_cast<std::uint8_t>(rnd.next());
            break;
        }
    }
    return b;
}

} // namespace

int main(int argc, char** argv) {
    std::size_t mutations = 0;
    std::uint64_t seed = 20240601;
    std::vector<fs::path> files;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == "--mutations" && i + 1 < argc) {
            mutations = std::strtoull(argv[++i], nullptr, 10);
        } else if (a == "--seed" && i + 1 < argc) {
            seed = std::strtoull(argv[++i], nullptr, 10);
        } else if (fs::is_directory(a)) {
            for (const auto& e : fs::directory_iterator(a))
                if (e.is_regular_file())
                    files.push_back(e.path());
        } else if (fs::is_regular_file(a)) {
            files.push_back(a);
        } else {
            std::fprintf(stderr, "%s: no such file or directory: %s\n", argv[0], argv[i]);
            return 2;
        }
    }
    if (files.empty()) {
        std::fprintf(stderr,
                     "usage: %s [--mutations N] [--seed S] DIR_OR_FILE... (no inputs found)\n",
                     argv[0]);
        return 2;
    }
    std::sort(files.begin(), files.end());
    std::vector<Bytes> corpus;
    for (const auto& f : files) {
        corpus.push_back(readFile(f));
        runOne(corpus.back());
    }
    Random rnd(seed);
    for (std::size_t i = 0; i < mutations; ++i)
        runOne(mutate(corpus, rnd));
    std::printf("%zu corpus inputs and %zu mutations ran without a failure\n", corpus.size(),
                mutations);
    return 0;
}
