-- The Lua layer alone, for `sh bench/run.sh profile`: ibkr's session calls (pacing off, as the
-- ibkr peer) with the exchange taken out. The caller's core session is replaced by a stand-in
-- whose perform returns, at once, the answer decoded once at start (the bodies nginx serves,
-- bench/nginx.conf.in), so what is counted is the policy layer: the waiter, the caller (pacing,
-- deadline, retries, counters, streaks), the state observation. No network, no C exchange, no
-- decoding. A bench instrument only: it reaches into the session's private fields.
--
-- usage: lua5.4 bench/layer.lua auth|mixed N [WARMUP]

local scenario, n, warm = arg[1], tonumber(arg[2]), tonumber(arg[3] or 200)
if not ((scenario == "auth" or scenario == "mixed") and n) then
  io.stderr:write("usage: layer.lua auth|mixed N [WARMUP]\n")
  os.exit(64)
end

local ibkr = require("ibkr")
local core = ibkr.core

local AUTH = '{"MAC":"F4:03:43:CD:BD:C0","authenticated":true,"competing":false,"connected":true,'
  .. '"established":true,"fail":"","hardware_info":"1c4558e8|F4:03:43:CD:BD:C0","message":"",'
  .. '"serverInfo":{"serverName":"JifC11113","serverVersion":"Build 10.25.0m, Nov 17, 2023 11:29:27 AM"}}'
local ANSWERS = {
  ["/iserver/auth/status"] = AUTH,
  ["/iserver/reauthenticate"] = '{"message":"triggered"}',
  ["/logout"] = '{"status":true}',
  ["/sso/validate"] = '{"USER_ID":123456789,"USER_NAME":"user1234","RESULT":true,"features":{"env":"PROD"}}',
  ["/tickle"] = '{"collission":false,"iserver":{"authStatus":' .. AUTH
    .. '},"session":"ce109cbeb462a76dc3f6f4182c830cc1"}',
}
local decoded, sizes = {}, {}
for path, body in pairs(ANSWERS) do decoded[path], sizes[path] = assert(core.decode(body)), #body end
-- what the core hands over besides: the final response's header block (meta.headers is built from
-- it when read) and the body's length
local HEAD = "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 07 Dec 2026 20:00:00 GMT\r\n"
  .. "Content-Type: application/json\r\nContent-Length: 269\r\nConnection: keep-alive\r\n\r\n"

local s = ibkr.new{ base_url = "http://127.0.0.1:9/v1/api", pacing = false }
local caller = assert(s._call, "bench/layer.lua: the session has no caller (_call)")
local real = caller.core
caller.core = {
  perform = function(_, _, path) return decoded[path], nil, 200, HEAD, sizes[path] end,
  info = function() return real:info() end,
  close = function() real:close() end,
}

local CYCLE = {
  { "auth_status", function(r) return r.authenticated == true end },
  { "reauthenticate", function(r) return r.message == "triggered" end },
  { "logout", function(r) return r.status == true end },
  { "sso_validate", function(r) return r.RESULT == true end },
  { "tickle", function(r) return type(r.session) == "string" end },
}
local calls = scenario == "auth" and { CYCLE[1] } or CYCLE
local ncalls = #calls

local function one(c)
  local r, err = s[c[1]](s)
  if r == nil then error(tostring(err)) end
  if not c[2](r) then error(c[1] .. ": check failed") end
end

for i = 1, warm do one(calls[(i - 1) % ncalls + 1]) end
local c0 = os.clock()
for i = 1, n do one(calls[(i - 1) % ncalls + 1]) end
local c1 = os.clock()
io.write(string.format("peer=layer scenario=%s n=%d cpu_us=%.3f\n", scenario, n, (c1 - c0) * 1e6 / n))
s:close()
