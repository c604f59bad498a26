-- Memory over many calls through `ibkr` (pacing off), the mixed cycle of the five session calls.
-- usage: lua5.4 bench/memory.lua BASE_URL [N]
-- Prints RSS (VmRSS) and the Lua heap (collectgarbage("count"), as found and after a full collect)
-- at 1k calls and at N calls, and the growth between them.
local ibkr = require("ibkr")

local base, n = arg[1], math.tointeger(tonumber(arg[2] or 100000))
if not base or not n or n < 1000 then
  io.stderr:write("usage: memory.lua BASE_URL [N >= 1000]\n")
  os.exit(64)
end

local function rss_kib()
  local f = assert(io.open("/proc/self/status", "r"))
  local kib
  for line in f:lines() do
    kib = kib or tonumber(line:match("^VmRSS:%s*(%d+)"))
  end
  f:close()
  return kib
end

local s = ibkr.new{ base_url = base, pacing = false }
local cycle = {
  function() return s:auth_status().authenticated == true end,
  function() return s:reauthenticate().message == "triggered" end,
  function() return s:logout().status == true end,
  function() return s:sso_validate().RESULT == true end,
  function() return type(s:tickle().session) == "string" end,
}

local marks = {}
local function mark(at)
  local heap = collectgarbage("count")
  collectgarbage("collect")
  marks[#marks + 1] = { at = at, rss = rss_kib(), heap = heap, live = collectgarbage("count") }
end

for i = 1, n do
  if not cycle[(i - 1) % #cycle + 1]() then
    io.stderr:write("memory.lua: check failed at call ", i, "\n")
    os.exit(1)
  end
  if i == 1000 or i == n then mark(i) end
end
local a, b = marks[1], marks[2]
local st = s:stats()
for _, m in ipairs(marks) do
  io.write(string.format("mem calls=%d rss_kib=%d heap_kib=%.1f live_kib=%.1f\n",
    m.at, m.rss, m.heap, m.live))
end
io.write(string.format("mem growth rss_kib=%d live_kib=%.1f connects=%s\n", b.rss - a.rss, b.live - a.live,
  tostring(st.connects)))
s:close()
