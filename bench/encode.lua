-- Request-body encoding speed: ibkr.core's encoder (src/json.c) against lua-cjson's on typical
-- bodies. Figures only, never a gate (docs/json.md quotes them).
--
--   lua5.4 bench/encode.lua [N]        (N encodes per body and encoder, default 200000)
--
-- cjson's text is not the same (it writes 14 significant digits and hash order): this measures
-- what exactness, sorted keys and the UTF-8 check cost.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local core = require("ibkr.core")
local cjson = require("cjson").new()

local N = tonumber(arg[1]) or 200000

local bodies = {
  -- POST /iserver/account/{accountId}/orders: one limit order
  order = { orders = { { acctId = "U1234567", conid = 265598, secType = "265598:STK",
    cOID = "my-order-0001", orderType = "LMT", listingExchange = "SMART", outsideRTH = false,
    price = 189.35, side = "BUY", tif = "DAY", quantity = 100, useAdaptive = false } } },
  -- POST /iserver/auth/ssodh/init
  init = { publish = true, compete = false },
  -- a bracket: parent and two children, more floats
  bracket = { orders = {
    { conid = 265598, orderType = "LMT", price = 189.35, side = "BUY", quantity = 100, tif = "GTC",
      cOID = "p1" },
    { conid = 265598, orderType = "LMT", price = 199.99, side = "SELL", quantity = 100, tif = "GTC",
      parentId = "p1", cOID = "tp" },
    { conid = 265598, orderType = "STP", price = 179.5, side = "SELL", quantity = 100, tif = "GTC",
      parentId = "p1", cOID = "sl" } } },
}

local clock = core.monotonic

local function time(f, body)
  for _ = 1, 1000 do f(body) end                 -- warm up
  collectgarbage()
  local t0 = clock()
  for _ = 1, N do f(body) end
  return (clock() - t0) / N * 1e6
end

print(string.format("%-8s %6s %12s %12s %7s", "body", "bytes", "core us/op", "cjson us/op", "ratio"))
for _, name in ipairs{ "init", "order", "bracket" } do
  local b = bodies[name]
  local ours, theirs = time(core.encode, b), time(cjson.encode, b)
  print(string.format("%-8s %6d %12.3f %12.3f %7.2f", name, #core.encode(b), ours, theirs, ours / theirs))
end
