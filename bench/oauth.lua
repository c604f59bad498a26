-- bench/oauth.lua [N]: the costs of OAuth 1.0a (docs/oauth.md), printed (figures, never a gate):
--   * one live session token handshake: the client's crypto alone (challenge g^a mod p, the
--     RSA-SHA256 signature, K = B^a mod p, the HMACs; the secret was decrypted at ibkr.new) and the
--     whole exchange against the mock gateway in OAuth mode over plain HTTP (which adds the mock's
--     server-side crypto);
--   * the per-request signing overhead: building and signing the Authorization header (µs), and
--     that as a multiple of an unsigned call (the ibkr session's POST /tickle against the plain
--     mock, no TLS, pacing off): (unsigned + signing) / unsigned.
-- Run from the checkout: lua5.4 bench/oauth.lua  (make bench runs it at its end).
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local ibkr = require("ibkr")
local oauth = require("ibkr.oauth")
local mock = require("spec.helpers.mock")
local now = ibkr.core.monotonic

local N = tonumber(arg[1]) or 2000
local HANDSHAKES = math.max(20, N // 50)

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

local function each(n, f)
  local times = {}
  for i = 1, n do
    local t0 = now()
    f(i)
    times[i] = now() - t0
  end
  return median(times)
end

local dir = os.tmpname()
os.remove(dir)
local om = assert(mock.start{ tls = false, pacing = false, args = { "--oauth", "--oauth-dir", dir } })
local plain = assert(mock.start{ tls = false, pacing = false })
local cfg = assert(oauth.read_config(dir .. "/oauth.conf"))

local signed = ibkr.new{ base_url = om.url, oauth = cfg, pacing = false }
local unsigned = ibkr.new{ base_url = plain.url, pacing = false }
assert(signed:tickle())
assert(unsigned:tickle())

-- handshake, client crypto only: the calls call.lua makes, the mock's answer (which depends on
-- this round's challenge) fetched outside the timed part
local o = signed._oauth
local crypto = {}
for i = 1, HANDSHAKES do
  local t0 = now()
  local copts = o:token_request()
  local t1 = now()
  local r = assert(om:request("POST", "/v1/api/oauth/live_session_token", { headers = copts.headers }))
  local res = require("cjson").decode(r.body)
  local t2 = now()
  assert(o:accept_token(res, now()))
  crypto[i] = (t1 - t0) + (now() - t2)
end
local crypto_ms = median(crypto) * 1e3

local full_ms = each(HANDSHAKES, function()
  o._c:forget()
  assert(signed:tickle()) -- handshake + the tickle
end) * 1e3
local tickle_signed_us = each(N, function() assert(signed:tickle()) end) * 1e6
full_ms = full_ms - tickle_signed_us / 1e3

local sign_us = each(N, function() o:sign("POST", "/tickle") end) * 1e6
local unsigned_us = each(N, function() assert(unsigned:tickle()) end) * 1e6

print(string.format("oauth: LST handshake, client crypto          %8.2f ms  (median of %d)", crypto_ms,
  HANDSHAKES))
print(string.format("oauth: LST handshake, whole exchange (mock)  %8.2f ms  (HTTP, mock's crypto included)",
  full_ms))
print(string.format("oauth: per-request signing                   %8.1f µs  (median of %d)", sign_us, N))
print(string.format("oauth: unsigned call (POST /tickle, mock)    %8.1f µs", unsigned_us))
print(string.format("oauth: signing overhead                      %8.3f x an unsigned call",
  (unsigned_us + sign_us) / unsigned_us))
print(string.format("oauth: signed call against the OAuth mock    %8.1f µs  (the mock verifies it too)",
  tickle_signed_us))

signed:close()
unsigned:close()
om:stop()
plain:stop()
os.execute("rm -rf '" .. dir .. "'")
