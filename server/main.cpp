// trollproxy: reads the command line and runs what it asks for (server/server_app.hpp serves).
#include <utility>

#include "options.hpp"
#include "server_app.hpp"

int main(int argc, char** argv) {
    using namespace trollproxy::server;
    CommandLine cl = parseCommandLine(argc, argv);
    switch (cl.action) {
    case CommandLine::Action::Exit:
        return cl.exitCode;
    case CommandLine::Action::CheckConfig:
        return checkConfig(cl.checkConfigPath);
    case CommandLine::Action::Serve:
        break;
    }
    return ServerApp(std::move(cl.options)).run();
}
