-- A raw websocket server for bench/push.lua and bench/ibind_ws.py (no gateway logic): answers
-- /tickle, upgrades, greets, and on the first `smd+...` subscription writes M market-data frames of
-- about SIZE bytes as fast as it can. usage: lua5.4 bench/push_server.lua M SIZE [fields] (prints its
-- port); `fields`: the message's bulk is many small fields (a large snapshot) instead of one string
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
local ws = require("spec.helpers.wsserver")
local socket = require("socket")
local m, size = tonumber(arg[1]), tonumber(arg[2])
local srv = ws.new()
print(srv.port)
io.stdout:flush()
local body = '{"topic":"smd+265598","conid":265598,"31":"172.50","84":"172.49","86":"172.51",'
  .. '"_updated":1700000000000,"pad":"' .. string.rep("x", math.max(0, size - 110)) .. '"}'
if arg[3] == "fields" then -- about 28 bytes a field: {"conid":265598,"p":172.5}
  local parts, n = {}, math.max(1, (size - 60) // 28)
  for i = 1, n do parts[i] = string.format('{"conid":%d,"p":%d.5}', 265598 + i, 100 + i % 900) end
  body = '{"topic":"smd+265598","conid":265598,"rows":[' .. table.concat(parts, ",") .. ']}'
end
local frames = string.rep(ws.frame(1, body), m)
srv.on_upgrade = function(c) c:accept{ greet = true } end
srv.on_frame = function(c, f)
  if f.opcode == 1 and f.payload:match("^smd%+") and not c.sent_all then
    c.sent_all = true
    c:raw(frames)
  end
end
while true do
  srv:step()
  socket.select(srv:sockets(), nil, 0.05)
end
