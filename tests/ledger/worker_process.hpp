// Runs tests/ledger/ledger_worker as a child process and reads what it printed.
#pragma once

#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <spawn.h>
#include <string>
#include <sys/wait.h>
#include <vector>

#include <doctest/doctest.h>

extern char** environ;

namespace trollproxy::test {

/// Runs the worker (arguments as its usage says) with stdout to `out`; returns its pid.
inline pid_t spawnWorker(std::vector<std::string> args, const std::string& out) {
    const char* b = std::getenv("TROLLPROXY_BUILD_ROOT");
    args.insert(args.begin(), std::string(b ? b : ".") + "/tests/ledger/ledger_worker");
    std::vector<char*> argv;
    for (auto& a : args)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = 0;
    REQUIRE(posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    return pid;
}

/// Waits for the process; its waitpid status.
inline int waitFor(pid_t pid) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return status;
}

/// What follows "WORD " on each line of `file` that starts so.
inline std::vector<std::string> linesWith(const std::string& file, const std::string& word) {
    std::ifstream in(file);
    std::vector<std::string> out;
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(word + " ", 0) == 0)
            out.push_back(line.substr(word.size() + 1));
    }
    return out;
}

} // namespace trollproxy::test
