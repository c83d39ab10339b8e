// SIGHUP: the config file read again, and the changed settings a running server cannot apply.
#pragma once

#include <string>
#include <vector>

#include "options.hpp"
#include "trollproxy/proxy.hpp"

namespace trollproxy::server {

/// What a reload changed that it cannot apply.
struct Unapplied {
    std::vector<std::string> needRestart; ///< read once at start
    std::vector<std::string> overridden;  ///< set by a command-line option instead
};

/// The settings that differ between the config the server `started` with and
/// `next`, and that only a restart (or no command-line option) would apply.
Unapplied unappliedChanges(const Config& started, const Config& next, const Overrides& o);

/// Reads `configPath` again and hands it to the service; logs an error when it
/// cannot, else a warning for each changed setting it cannot apply.
void reloadConfig(ProxyService& service, const std::string& configPath, const Config& started,
                  const Overrides& overrides);

} // namespace trollproxy::server
