// trollproxy: the whole public API in one include.
#pragma once

#include "trollproxy/clock.hpp"
#include "trollproxy/config.hpp"
#include "trollproxy/journal.hpp"
#include "trollproxy/ledger.hpp"
#include "trollproxy/ledger_admin.hpp"
#include "trollproxy/money.hpp"
#include "trollproxy/pool.hpp"
#include "trollproxy/pricing.hpp"
#include "trollproxy/proxy.hpp"
#include "trollproxy/result.hpp"
#include "trollproxy/sse.hpp"
#include "trollproxy/upstream.hpp"
#include "trollproxy/usage.hpp"
