rockspec_format = "3.0"
package = "ibkr-web-api"
version = "0.1.0-1"
source = {
  url = "git+https://example.invalid/lua-ibkr.git",
  tag = "v0.1.0",
}
description = {
  summary = "Session client for Interactive Brokers' Client Portal Web API (libcurl)",
  detailed = [[
    Keeps an IBKR Client Portal Gateway session alive and reports precisely what is wrong when it
    is not: a C core on libcurl returning native Lua tables, a Lua layer with health, pacing,
    retries and a keep-alive coroutine that never blocks its host, and a CLI. The mock gateway
    for tests is the rock ibkr-web-api-mock.
  ]],
  license = "MIT",
  labels = { "ibkr", "http", "libcurl", "trading" },
}
dependencies = {
  "lua >= 5.4, < 5.5",
  -- luasocket, luasec and lua-zlib are needed only by the mock gateway: it is the separate rock
  -- ibkr-web-api-mock (rockspec/ibkr-web-api-mock-*.rockspec), a test dependency (docs/testing.md)
}
external_dependencies = {
  CURL = { library = "curl" },
  OPENSSL = { library = "crypto" },  -- OAuth 1.0a and 2.0 (src/oauth.c); Debian: libssl-dev
  WSLAY = { header = "wslay/wslay.h", library = "wslay" }, -- the push channel's framing; Debian: libwslay-dev
}
build = {
  type = "builtin",
  modules = {
    ["ibkr.core"] = {
      sources = { "src/core.c", "src/session.c", "src/request.c", "src/message.c", "src/error.c", "src/json.c",
                  "src/wire.c", "src/signal.c", "src/oauth.c", "src/proc.c", "src/websocket.c",
                  -- the Lua-free part: engine thread, lanes, transfers, connections, websocket
                  -- connections, error kinds, text, buffers
                  "src/lib/transfer.c", "src/lib/lane.c", "src/lib/engine.c", "src/lib/handle.c",
                  "src/lib/conn.c", "src/lib/wsconn.c", "src/lib/kind.c", "src/lib/text.c", "src/lib/buf.c" },
      libraries = { "curl", "crypto", "wslay", "pthread", "m" },
      defines = { "_POSIX_C_SOURCE=200809L" },
      incdirs = { "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)", "$(WSLAY_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(WSLAY_LIBDIR)" },
    },
    ["ibkr.call"] = "lua/ibkr/call.lua",
    ["ibkr.callback"] = "lua/ibkr/callback.lua",
    ["ibkr.check"] = "lua/ibkr/check.lua",
    ["ibkr.cli"] = "lua/ibkr/cli.lua",
    ["ibkr.cli.alert"] = "lua/ibkr/cli/alert.lua",
    ["ibkr.cli.args"] = "lua/ibkr/cli/args.lua",
    ["ibkr.cli.commands"] = "lua/ibkr/cli/commands.lua",
    ["ibkr.cli.drive"] = "lua/ibkr/cli/drive.lua",
    ["ibkr.cli.endpoints"] = "lua/ibkr/cli/endpoints.lua",
    ["ibkr.cli.hints"] = "lua/ibkr/cli/hints.lua",
    ["ibkr.cli.http"] = "lua/ibkr/cli/http.lua",
    ["ibkr.cli.keepalive"] = "lua/ibkr/cli/keepalive.lua",
    ["ibkr.cli.listen"] = "lua/ibkr/cli/listen.lua",
    ["ibkr.cli.out"] = "lua/ibkr/cli/out.lua",
    ["ibkr.cli.report"] = "lua/ibkr/cli/report.lua",
    ["ibkr.cli.watch"] = "lua/ibkr/cli/watch.lua",
    ["ibkr.config_file"] = "lua/ibkr/config_file.lua",
    ["ibkr"] = "lua/ibkr/init.lua",
    ["ibkr.cqueues"] = "lua/ibkr/cqueues.lua",
    ["ibkr.driven"] = "lua/ibkr/driven.lua",
    ["ibkr.keepalive"] = "lua/ibkr/keepalive.lua",
    ["ibkr.kinds"] = "lua/ibkr/kinds.lua",
    ["ibkr.luv"] = "lua/ibkr/luv.lua",
    ["ibkr.meta"] = "lua/ibkr/meta.lua",
    ["ibkr.metrics"] = "lua/ibkr/metrics.lua",
    ["ibkr.oauth"] = "lua/ibkr/oauth.lua",
    ["ibkr.oauth2"] = "lua/ibkr/oauth2.lua",
    ["ibkr.redact"] = "lua/ibkr/redact.lua",
    ["ibkr.pacing"] = "lua/ibkr/pacing.lua",
    ["ibkr.push"] = "lua/ibkr/push.lua",
    ["ibkr.repair"] = "lua/ibkr/repair.lua",
    ["ibkr.retry"] = "lua/ibkr/retry.lua",
    ["ibkr.run"] = "lua/ibkr/run.lua",
    ["ibkr.state"] = "lua/ibkr/state.lua",
    ["ibkr.stats"] = "lua/ibkr/stats.lua",
    ["ibkr.stream"] = "lua/ibkr/stream.lua",
    ["ibkr.trace"] = "lua/ibkr/trace.lua",
    ["ibkr.waiter"] = "lua/ibkr/waiter.lua",
    ["ibkr.version"] = "lua/ibkr/version.lua",
  },
  install = {
    bin = {
      ["ibkr-session"] = "bin/ibkr-session",
    },
  },
}
