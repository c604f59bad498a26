-- The keep-alive stall figure: the longest single resume of the keep-alive coroutine
-- (s:keepalive()) while the gateway takes 2 s to answer /tickle.
-- The gateway is the project's mock (bin/ibkr-mock-gateway), told by its fault injection
-- (POST /__mock/fault {"path":"/tickle","kind":"delay","seconds":2,"count":3}) to delay the next
-- three tickles. The host loop resumes the coroutine, then sleeps the seconds it yielded.
-- usage: lua5.4 bench/stall.lua BASE_URL [SECONDS]
local ibkr = require("ibkr")
local core = ibkr.core
local cjson = require("cjson")
local ltn12 = require("ltn12")

local base, secs = arg[1], tonumber(arg[2] or 7)
if not base then
  io.stderr:write("usage: stall.lua BASE_URL [SECONDS]\n")
  os.exit(64)
end
local root = base:gsub("/v1/api/?$", "")
local request = root:match("^https:") and require("ssl.https").request or require("socket.http").request

local fault = cjson.encode{ path = "/tickle", kind = "delay", seconds = 2, count = 3 }
local ok, code = request{
  url = root .. "/__mock/fault", method = "POST", source = ltn12.source.string(fault),
  headers = { ["content-type"] = "application/json", ["content-length"] = tostring(#fault) },
  sink = ltn12.sink.null(),
}
if not ok or code ~= 200 then
  io.stderr:write("stall.lua: fault injection failed: ", tostring(code), "\n")
  os.exit(1)
end

local s = ibkr.new{ base_url = base }
local co = s:keepalive{ interval = 0.2 }
local clock = core.monotonic
local t_end = clock() + secs
local resumes, longest, first, total = 0, 0, nil, 0
local durations = {}
while clock() < t_end and coroutine.status(co) == "suspended" do
  local t0 = clock()
  local rok, wait = coroutine.resume(co)
  local dt = clock() - t0
  if not rok then
    io.stderr:write("stall.lua: keep-alive raised: ", tostring(wait), "\n")
    os.exit(1)
  end
  resumes = resumes + 1
  total = total + dt
  durations[#durations + 1] = dt
  if first == nil then first = dt else longest = math.max(longest, dt) end
  core.sleep(math.min(wait or 0.01, math.max(0, t_end - clock())))
end
s:stop()
if coroutine.status(co) == "suspended" then coroutine.resume(co) end
table.sort(durations)
local st = s:stats()
io.write(string.format("stall url=%s resumes=%d tickles=%d longest_us=%.1f first_us=%.1f median_us=%.1f "
  .. "p99_us=%.1f\n", base, resumes, st.requests, longest * 1e6, (first or 0) * 1e6,
  durations[math.floor((#durations + 1) / 2)] * 1e6,
  durations[math.max(1, math.floor(#durations * 0.99))] * 1e6))
s:close()
