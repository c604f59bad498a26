-- longrun.lua [TICKS] [TLS]: the keep-alive with a 10 ms interval against the mock gateway for TICKS
-- tickles (default 100000, about 20 minutes; `make longrun`), with a fault injected every few
-- hundred ticks (HTTP errors, 429 with Retry-After, dropped connections, HTML, truncated and deep
-- JSON, gzip, chunked, slow answers, the session expiring). The process's RSS and the Lua heap
-- are sampled every 1% of the run after a full GC; after a warm-up (the first 20%) they must stay
-- flat: RSS within +2 MiB and the Lua heap within +64 KiB of the warm-up level, and the
-- keep-alive must still be running at the end. Exits 1 otherwise. TLS=1 runs over HTTPS.
-- A short version (2000 ticks) runs in `make check`.
package.path = "lua/?.lua;lua/?/init.lua;./?.lua;" .. package.path
local mock = require("spec.helpers.mock")
local ibkr = require("ibkr")
local core = ibkr.core

local TICKS = tonumber(arg[1]) or 100000
local use_tls = arg[2] == "1" or arg[2] == "tls"
local m = assert(mock.start{ tls = use_tls, pacing = false, init_delay = 0, reauth_delay = 0 })

local s = ibkr.new{ base_url = m.url, pacing = false, retries = 1, timeout = 2 }
local states, errors = {}, 0
local co = s:keepalive{
  interval = 0.01, retry_interval = 0.01,
  on_state = function(new) states[new] = (states[new] or 0) + 1 end,
  on_error = function() errors = errors + 1 end,
}

local faults = {
  { kind = "status", status = 500 },
  { kind = "status", status = 503, headers = { ["Retry-After"] = "1" } },
  { kind = "status", status = 401 },
  { kind = "drop", when = "mid" },
  { kind = "drop", when = "before" },
  { kind = "html" },
  { kind = "truncated" },
  { kind = "deep", depth = 10000 },
  { kind = "gzip" },
  { kind = "chunked" },
  { kind = "delay", seconds = 0.05 },
  { kind = "malformed" },
  { kind = "error_body", error = "no session" },
}

local function rss_kib()
  local f = assert(io.open("/proc/self/statm"))
  f:read("n") -- size
  local pages = f:read("n") -- resident
  f:close()
  return pages * 4 -- 4 KiB pages
end

-- samples live in arrays allocated up front, so that sampling does not grow the heap it measures
local step = math.max(TICKS // 100, 1)
local NS = TICKS // step + 3
local s_tick, s_rss, s_heap, ns = {}, {}, {}, 0
for i = 1, NS do s_tick[i], s_rss[i], s_heap[i] = 0, 0, 0.0 end
local function sample(tick)
  collectgarbage()
  collectgarbage()
  ns = math.min(ns + 1, NS)
  s_tick[ns], s_rss[ns], s_heap[ns] = tick, rss_kib(), collectgarbage("count")
end

local next_fault, next_sample, nfault = 150, step, 0
local t0 = core.monotonic()
sample(0)
while true do
  local ok, wait, inflight = coroutine.resume(co) -- inflight: the request, while one runs
  if not ok or coroutine.status(co) == "dead" then
    io.stderr:write("keep-alive ended: " .. tostring(wait) .. "\n")
    os.exit(1)
  end
  local ticks = s:stats().requests
  if ticks >= TICKS then break end
  if ticks >= next_fault and not inflight then
    nfault = nfault + 1
    local f = faults[(nfault - 1) % #faults + 1]
    local spec = { path = "/tickle" }
    for k, v in pairs(f) do spec[k] = v end
    m:fault(spec)
    if nfault % 7 == 0 then m:set_state("unauthenticated") end -- the keep-alive must repair it
    next_fault = next_fault + 200 + (nfault * 37) % 200
  end
  if ticks >= next_sample then
    sample(ticks)
    next_sample = next_sample + step
    if ns % 10 == 0 then m:clear_log() end
  end
  if inflight then inflight:wait(inflight:timeout())
  elseif wait and wait > 0 then core.sleep(wait) end
end
sample(TICKS)
local elapsed = core.monotonic() - t0
coroutine.close(co)
s:close()
m:stop()

local w = math.max(ns // 5, 2)
local max_rss, max_heap = 0, 0
for i = w, ns do
  max_rss = math.max(max_rss, s_rss[i])
  max_heap = math.max(max_heap, s_heap[i])
end
print(string.format("%-10s %10s %12s", "tick", "RSS KiB", "Lua heap KiB"))
for i = 1, ns, math.max(ns // 20, 1) do
  print(string.format("%-10d %10d %12.1f", s_tick[i], s_rss[i], s_heap[i]))
end
print(string.format("%-10d %10d %12.1f", s_tick[ns], s_rss[ns], s_heap[ns]))
local names = {}
for k, v in pairs(states) do names[#names + 1] = k .. "=" .. v end
table.sort(names)
print(string.format("%d ticks in %.1f s, %d faults injected, %d errors reported, states: %s",
  TICKS, elapsed, nfault, errors, table.concat(names, " ")))
print(string.format(
  "after warm-up (tick %d): RSS %d -> max %d KiB (+%d), Lua heap %.1f -> max %.1f KiB (%+.1f)",
  s_tick[w], s_rss[w], max_rss, max_rss - s_rss[w], s_heap[w], max_heap, max_heap - s_heap[w]))
if max_rss - s_rss[w] > 2048 or max_heap - s_heap[w] > 64 then
  io.stderr:write("longrun: memory grew\n")
  os.exit(1)
end
if nfault < TICKS // 500 then
  io.stderr:write("longrun: too few faults injected\n")
  os.exit(1)
end
print("flat")
