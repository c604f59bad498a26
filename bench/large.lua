-- A large answer: how long the decoder takes for a 5.7 MB JSON document shaped like a big
-- gateway answer (an array of objects with numbers, strings, nested arrays and nulls). The
-- decoder runs inside one resume (it is not sliced): this is the bound the docs give, per MB.
-- usage: lua5.4 bench/large.lua [MB]
local core = require("ibkr.core")
local mb = tonumber(arg[1] or 5.7)

local parts, size, i = {}, 0, 0
while size < mb * 1e6 do
  i = i + 1
  local item = string.format('{"conid":%d,"symbol":"SYM%d","price":%.4f,"size":%d,"flags":[true,false,null],'
    .. '"desc":"Contract number %d on an exchange","ts":%d}', 100000 + i, i, i * 1.25, i % 1000, i,
    1700000000000 + i)
  parts[#parts + 1] = item
  size = size + #item + 1
end
local text = "[" .. table.concat(parts, ",") .. "]"
local best = math.huge
for _ = 1, 5 do
  collectgarbage()
  local t0 = core.monotonic()
  local v = assert(core.decode(text))
  local dt = core.monotonic() - t0
  assert(#v == i)
  if dt < best then best = dt end
end
io.write(string.format("large bytes=%d items=%d decode_ms=%.1f ms_per_mb=%.1f\n", #text, i, best * 1e3,
  best * 1e3 / (#text / 1e6)))
