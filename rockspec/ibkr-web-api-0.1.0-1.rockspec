rockspec_format = "3.0"
package = "ibkr-web-api"
version = "0.1.0-1"
source = {
  url = "git+https://example.invalid/lua-ibkr.git",
  tag = "v0.1.0",
}
description = {
  summary = "Session client for Interactive Brokers' Client Portal Web API (libcurl + lua-cjson)",
  detailed = [[
    Keeps an IBKR Client Portal Gateway session alive and reports precisely what is wrong when it
    is not: a C core on libcurl returning native Lua tables, a Lua layer with health, pacing,
    retries and a keep-alive coroutine that never blocks its host, a CLI and a mock gateway.
  ]],
  license = "MIT",
  labels = { "ibkr", "http", "libcurl", "trading" },
}
dependencies = {
  "lua >= 5.4, < 5.5",
  "lua-cjson >= 2.1.0",   -- encodes request bodies (responses are decoded by the C module)
  "luasocket >= 3.0",     -- the mock gateway (ibkr.mock, ibkr-mock-gateway) and its tests
  "luasec >= 1.0",        -- the mock gateway over TLS
}
external_dependencies = {
  CURL = { library = "curl" },
  OPENSSL = { library = "crypto" },  -- OAuth 1.0a (src/oauth.c); Debian: libssl-dev
}
build = {
  type = "builtin",
  modules = {
    ["ibkr.core"] = {
      sources = { "src/core.c", "src/request.c", "src/decode.c", "src/error.c", "src/oauth.c" },
      libraries = { "curl", "crypto", "pthread", "m" },
      defines = { "_POSIX_C_SOURCE=200809L" },
      incdirs = { "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)" },
    },
    ["ibkr.call"] = "lua/ibkr/call.lua",
    ["ibkr.cli"] = "lua/ibkr/cli.lua",
    ["ibkr"] = "lua/ibkr/init.lua",
    ["ibkr.keepalive"] = "lua/ibkr/keepalive.lua",
    ["ibkr.mock"] = "lua/ibkr/mock.lua",
    ["ibkr.mock.control"] = "lua/ibkr/mock/control.lua",
    ["ibkr.mock.faults"] = "lua/ibkr/mock/faults.lua",
    ["ibkr.mock.gateway"] = "lua/ibkr/mock/gateway.lua",
    ["ibkr.mock.gzip"] = "lua/ibkr/mock/gzip.lua",
    ["ibkr.mock.http"] = "lua/ibkr/mock/http.lua",
    ["ibkr.mock.json"] = "lua/ibkr/mock/json.lua",
    ["ibkr.mock.pacing"] = "lua/ibkr/mock/pacing.lua",
    ["ibkr.mock.response"] = "lua/ibkr/mock/response.lua",
    ["ibkr.mock.server"] = "lua/ibkr/mock/server.lua",
    ["ibkr.mock.tls"] = "lua/ibkr/mock/tls.lua",
    ["ibkr.mock.oauth"] = "lua/ibkr/mock/oauth.lua",
    ["ibkr.oauth"] = "lua/ibkr/oauth.lua",
    ["ibkr.pacing"] = "lua/ibkr/pacing.lua",
    ["ibkr.retry"] = "lua/ibkr/retry.lua",
    ["ibkr.run"] = "lua/ibkr/run.lua",
    ["ibkr.state"] = "lua/ibkr/state.lua",
  },
  install = {
    bin = {
      ["ibkr-mock-gateway"] = "bin/ibkr-mock-gateway",
      ["ibkr-session"] = "bin/ibkr-session",
    },
  },
}
