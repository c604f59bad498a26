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
  "lua-cjson >= 2.1.0",
}
external_dependencies = {
  CURL = { library = "curl" },
}
build = {
  type = "builtin",
  modules = {
    ["ibkr.core"] = {
      sources = { "src/core.c", "src/request.c", "src/decode.c", "src/error.c" },
      libraries = { "curl", "pthread", "m" },
      defines = { "_POSIX_C_SOURCE=200809L" },
      incdirs = { "$(CURL_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)" },
    },
    ["ibkr"] = "lua/ibkr/init.lua",
  },
  install = {
    bin = {},
  },
}
