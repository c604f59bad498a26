-- ibkr.run: drives keep-alive coroutines, streams, or any coroutine that yields "seconds until my
-- next resume", optionally followed by a pollable, from a plain script. Between resumes it waits
-- in poll(2) (core.poll) on the descriptors of the requests in flight, until the earliest timer
-- (with nothing in flight: poll(2) on no descriptor, a sleep): a coroutine whose answer arrived
-- is resumed at once, without polling in small sleeps. A signal that lua5.4 turns into
-- "interrupted!" (SIGINT) ends the wait at once, and so the run.

local core = require("ibkr.core")
local driven = require("ibkr.driven")

local M = {}

local OPTIONS = { duration = "number", clock = "function", sleep = "function" }

local function check(cos, opts)
  local list = driven.coroutines(cos, "ibkr.run", 3)
  if opts == nil then return list, {} end
  if type(opts) ~= "table" then error("ibkr.run: options must be a table, not a " .. type(opts), 3) end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then
      error("ibkr.run: unknown option '" .. tostring(k) .. "' (known: clock, duration, sleep)", 3)
    end
    if type(v) ~= want then
      error("ibkr.run: '" .. k .. "' must be a " .. want .. ", not a " .. type(v), 3)
    end
  end
  local d = opts.duration
  if d ~= nil and (d ~= d or d < 0) then error("ibkr.run: 'duration' must be a number of seconds >= 0", 3) end
  return list, opts
end

local status, huge = coroutine.status, math.huge

-- One driver at a time per coroutine (ibkr/driven.lua): run claims the coroutines it drives
-- (raising at the caller's line when another driver drives one of them) until it returns or
-- raises.
local Claim = { __close = function(c) for i = 1, #c do driven.release(c[i]) end end }
local function claimed(list)
  return setmetatable(driven.claim(list, "ibkr.run", 3), Claim)
end

-- run(x, {duration = s, clock = fn, sleep = fn}) -> true when all ended, false when the duration
-- passed first (those still alive stay alive and can be driven again, on their schedule).
-- x: a coroutine, an object with :coroutine() (a stream), or a list of them.
-- A coroutine that raises makes run raise that error (a keep-alive never raises).
-- With opts.sleep (a fake or a host's sleep) descriptors are not waited on: coroutines are
-- resumed after the seconds they yielded.
function M.run(cos, opts)
  local list
  list, opts = check(cos, opts)
  local claim <close> = claimed(list) -- luacheck: ignore claim
  local clock, sleep = opts.clock or core.monotonic, opts.sleep
  local with_fds = sleep == nil
  local deadline = opts.duration and clock() + opts.duration
  local fds, evs, owners, ready = {}, {}, {}, {}
  while true do
    local earliest, nfd = nil, 0
    for i = 1, #list do
      local co = list[i]
      if status(co) == "suspended" then
        local e = driven.entry(co, clock)
        if not e or ready[co] or e.due <= clock() then e = driven.resume(co, clock, with_fds) end
        if e then
          if not earliest or e.due < earliest then earliest = e.due end
          if e.fd and with_fds then
            nfd = nfd + 1
            fds[nfd], evs[nfd], owners[nfd] = e.fd, e.events, co
          end
        end
      end
    end
    for k in pairs(ready) do ready[k] = nil end
    if not earliest then return true end
    for i = nfd + 1, #fds do fds[i], evs[i], owners[i] = nil, nil, nil end
    local until_ = earliest
    if deadline and until_ > deadline then until_ = deadline end
    local left = until_ - clock()
    if with_fds then
      local got = { core.poll(fds, left < huge and (left > 0 and left or 0) or nil, evs) }
      for i = 1, #got do ready[owners[got[i]]] = true end
    elseif left > 0 then
      sleep(left)
    end
    if deadline and clock() >= deadline and not next(ready) then return false end
  end
end

return M
