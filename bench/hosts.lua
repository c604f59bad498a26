-- The host drivers' figures: a keep-alive (interval 0.2 s) driven by ibkr.luv or ibkr.cqueues
-- next to a 10 ms host timer of the loop's own, while the mock gateway holds three tickles for
-- 1 s each (fault injection: POST /__mock/fault {"path":"/tickle","kind":"delay","seconds":1,
-- "count":3}). Reported: the longest gap between two ticks of the host timer (10 ms when nothing
-- holds the loop back), the longest resume of the keep-alive after the first (the first starts
-- the engine thread and the connection), resumes per tickle, and the timer's ticks while a
-- request was in flight. `none`: the same luv timer alone (no keep-alive): the gaps the machine
-- itself causes (other processes taking the CPU), for comparison.
-- usage: lua5.4 bench/hosts.lua luv|cqueues|none BASE_URL [SECONDS]
local ibkr = require("ibkr")
local core = ibkr.core

local driver, base, secs = arg[1], arg[2], tonumber(arg[3] or 6)
if (driver ~= "luv" and driver ~= "cqueues" and driver ~= "none") or not base then
  io.stderr:write("usage: hosts.lua luv|cqueues|none BASE_URL [SECONDS]\n")
  os.exit(64)
end
local clock = core.monotonic

if driver ~= "none" then
  local control = core.new{ base_url = base:gsub("/v1/api/?$", "") }
  local _, err = control:perform("POST", "/__mock/fault",
    { body = { path = "/tickle", kind = "delay", seconds = 1, count = 3 } })
  if err then
    io.stderr:write("hosts.lua: fault injection failed: ", tostring(err), "\n")
    os.exit(1)
  end
  control:close()
end

local s = ibkr.new{ base_url = base }
local ka = s:keepalive{ interval = 0.2 }
local m = { resumes = 0, longest = 0, in_flight = false, beats = 0, beats_in_flight = 0, gap = 0 }

-- resumes the keep-alive, measuring each resume, and passes on what it yields
local probe = coroutine.create(function()
  while true do
    local t0 = clock()
    local r = table.pack(coroutine.resume(ka))
    local dt = clock() - t0
    m.resumes = m.resumes + 1
    if not m.first then m.first = dt elseif dt > m.longest then m.longest = dt end
    if not r[1] then error(r[2], 0) end
    if coroutine.status(ka) == "dead" then return end
    m.in_flight = r[3] ~= nil
    coroutine.yield(table.unpack(r, 2, r.n))
  end
end)

local t_end
local function beat() -- the host timer's tick; false when the run is over
  local t = clock()
  if m.last and t - m.last > m.gap then m.gap = t - m.last end
  m.last = t
  m.beats = m.beats + 1
  if m.in_flight then m.beats_in_flight = m.beats_in_flight + 1 end
  return t < t_end
end

if driver ~= "cqueues" then
  local uv = require("luv")
  local h = driver == "luv" and require("ibkr.luv").drive(probe) or { stop = function() end }
  local timer = uv.new_timer()
  t_end = clock() + secs
  timer:start(10, 10, function()
    if not beat() then
      h:stop()
      timer:close()
    end
  end)
  uv.run()
else
  local cqueues = require("cqueues")
  local cq = cqueues.new()
  local h = require("ibkr.cqueues").drive(cq, probe)
  t_end = clock() + secs
  cq:wrap(function()
    repeat cqueues.sleep(0.01) until not beat()
    h:stop()
  end)
  assert(cq:loop())
end
coroutine.close(ka)
local tickles = s:stats().requests
io.write(string.format("hosts driver=%s url=%s seconds=%g tickles=%d resumes=%d first_us=%.1f "
  .. "longest_us=%.1f timer_ms=10 beats=%d beats_in_flight=%d gap_ms=%.1f\n", driver, base, secs, tickles,
  m.resumes, (m.first or 0) * 1e6, m.longest * 1e6, m.beats, m.beats_in_flight, m.gap * 1e3))
s:close()
