// The trollproxy command line: its options, its usage text and --check-config.
#pragma once

#include <optional>
#include <string>

#include "trollproxy/config.hpp"

namespace trollproxy::server {

/// What the command line fixed, so that the config's value does not apply.
struct Overrides {
    bool listen = false;
    bool metricsListen = false;
    bool journal = false;
};

/// The options of a serving run, as given; defaults are applied later.
struct Options {
    std::string configPath;
    std::string ledgerUri;     ///< "": defaultLedgerUri()
    std::string listen;        ///< HOST:PORT; "": 0.0.0.0 and the config's port
    std::string metricsListen; ///< HOST:PORT or "off"; used when overrides.metricsListen
    std::string journal;       ///< "": the config's journal_path
    Overrides overrides;
};

/// What the command line asks for.
struct CommandLine {
    enum class Action { Serve, CheckConfig, Exit };
    Action action = Action::Serve;
    Options options;             ///< for Serve
    std::string checkConfigPath; ///< for CheckConfig
    int exitCode = 0;            ///< for Exit: 0 after --help, 2 after a usage error
};

/// Reads the arguments in order; --help, --check-config and the first error end
/// the reading. Usage text and errors are printed here.
CommandLine parseCommandLine(int argc, char** argv);

/// Loads the config file; prints why it cannot, or its warnings, on stderr.
std::optional<Config> loadConfigReporting(const std::string& path);

/// --check-config: prints each model's prices, the routes and a summary line.
/// Returns the exit code: 0 when the config loads, else 1.
int checkConfig(const std::string& path);

} // namespace trollproxy::server
