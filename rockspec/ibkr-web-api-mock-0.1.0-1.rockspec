rockspec_format = "3.0"
package = "ibkr-web-api-mock"
version = "0.1.0-1"
source = {
  url = "git+https://example.invalid/lua-ibkr.git",
  tag = "v0.1.0",
}
description = {
  summary = "A mock IBKR Client Portal Gateway and a test helper for busted specs",
  detailed = [[
    ibkr-mock-gateway emulates the Client Portal Gateway's session endpoints (states, pacing,
    realistic bodies) over HTTPS with a self-signed certificate, and injects the gateway's real
    failures through a control API. ibkr.mock.testing starts it from a test on a free port.
    Separate from ibkr-web-api so that the client does not depend on luasocket and luasec.
  ]],
  license = "MIT",
  labels = { "ibkr", "testing", "mock" },
}
dependencies = {
  "lua >= 5.4, < 5.5",
  "ibkr-web-api = 0.1.0",  -- what the mock is for (ibkr.mock.testing's gw:session())
  "lua-cjson >= 2.1.0",    -- reads control requests and request bodies
  "luasocket >= 3.0",      -- the server and the test helper's client
  "luasec >= 1.0",         -- HTTPS
  "lua-zlib >= 1.1",       -- the gzip fault
  "luaossl >= 20161208",   -- SHA-1 of the websocket handshake (Debian: lua-luaossl)
}
build = {
  type = "builtin",
  modules = {
    ["ibkr.mock"] = "lua/ibkr/mock.lua",
    ["ibkr.mock.control"] = "lua/ibkr/mock/control.lua",
    ["ibkr.mock.faults"] = "lua/ibkr/mock/faults.lua",
    ["ibkr.mock.files"] = "lua/ibkr/mock/files.lua",
    ["ibkr.mock.gateway"] = "lua/ibkr/mock/gateway.lua",
    ["ibkr.mock.json"] = "lua/ibkr/mock/json.lua",
    ["ibkr.mock.oauth"] = "lua/ibkr/mock/oauth.lua",
    ["ibkr.mock.oauth2"] = "lua/ibkr/mock/oauth2.lua",
    ["ibkr.mock.pacing"] = "lua/ibkr/mock/pacing.lua",
    ["ibkr.mock.proc"] = "lua/ibkr/mock/proc.lua",
    ["ibkr.mock.push"] = "lua/ibkr/mock/push.lua",
    ["ibkr.mock.response"] = "lua/ibkr/mock/response.lua",
    ["ibkr.mock.testing"] = "lua/ibkr/mock/testing.lua",
    ["ibkr.mock.topics"] = "lua/ibkr/mock/topics.lua",
    ["ibkr.mock.net.http"] = "lua/ibkr/mock/net/http.lua",
    ["ibkr.mock.net.server"] = "lua/ibkr/mock/net/server.lua",
    ["ibkr.mock.net.tls"] = "lua/ibkr/mock/net/tls.lua",
    ["ibkr.mock.net.ws"] = "lua/ibkr/mock/net/ws.lua",
  },
  install = {
    bin = {
      ["ibkr-mock-gateway"] = "bin/ibkr-mock-gateway",
    },
  },
}
