-- ibkr.luv: drives keep-alives, streams and cooperative workers from luv's default loop (libuv;
-- Debian: lua-luv), next to whatever else the loop runs (docs/hosts.md):
--   local h = require("ibkr.luv").drive(x)   -- x: anything ibkr.run accepts
--   uv.run()                                 -- returns once all of them ended (or h:stop())
-- Each coroutine has a uv timer for the seconds it yielded and, while a request is in flight, a uv
-- poll handle on the request's descriptor, so it is resumed when its answer is there (usually
-- once) or at its deadline; nothing fires in between. A resume takes well under a millisecond
-- (the exchange runs in the C core), so the loop's other handles are never held back.
-- luv is required when drive() is first called: it is not a dependency of ibkr.

local core = require("ibkr.core")
local driven = require("ibkr.driven")

local M = {}

local status, ceil, huge = coroutine.status, math.ceil, math.huge
local clock = core.monotonic

local uv
local function luv(level)
  if uv == nil then
    local ok, m = pcall(require, "luv")
    if not ok then
      error("ibkr.luv: the luv module is not installed (Debian: apt install lua-luv): " .. tostring(m),
        level + 1)
    end
    uv = m
  end
  return uv
end

-- libuv takes one poll handle per descriptor: the descriptors watched now, by any drive()
local watched = {}

local function ms(seconds)
  if seconds <= 0 then return 0 end
  return ceil(seconds * 1000)
end

-- Handles are closed when done with. Outside uv.run (a stop() from the main chunk) a handle is
-- only stopped, and closed from the next callback of this module: luv 1.44 crashes at exit when
-- a handle was closed and the loop never ran again to finish the close.
local pending = {}
local function close(h)
  if not h or h:is_closing() then return end
  if uv.loop_mode() then
    h:close()
  else
    h:stop() -- a poll handle forgets its descriptor here already
    pending[#pending + 1] = h
  end
end
local function close_pending()
  for i = #pending, 1, -1 do
    local h = pending[i]
    pending[i] = nil
    if not h:is_closing() then h:close() end
  end
end

-- One coroutine: its timer, its poll handle (while it waits on a descriptor), its schedule.
local function new_slot(co, on_stop)
  local d = { co = co, timer = uv.new_timer() }
  local step

  local function unwatch()
    if d.poll then
      close(d.poll) -- libuv forgets the descriptor now, before the resume may close it
      driven.unwatch(d.p, d.closing)
      watched[d.fd] = nil
      d.poll, d.fd, d.p = nil, nil, nil
    end
    d.timer:stop()
  end

  -- the pollable watched is about to be closed (the coroutine is closed from elsewhere, inside or
  -- outside uv.run): stop watching its descriptor now, and resume at the loop's next turn (a dead
  -- coroutine: its handles are closed then)
  function d.closing()
    if d.done then return end
    unwatch()
    d.timer:start(0, 0, step)
  end

  function d.finish()
    unwatch()
    close(d.timer)
    if not d.done then
      d.done = true
      driven.release(co)
      on_stop(d)
    end
  end

  local arm
  function step()
    if pending[1] then close_pending() end
    unwatch()
    if status(co) ~= "suspended" then return d.finish() end
    local ok, e = pcall(driven.resume, co, clock, true)
    if not ok then
      d.finish()
      error(e, 0) -- luv reports it as it reports any callback's error
    end
    if not e then return d.finish() end
    arm(e)
  end

  -- libuv's timers count from the loop's cached time, which lags: a time-only wait whose timer
  -- fired before the due time is started again for the rest (a coroutine never resumes early)
  local function on_timer()
    if pending[1] then close_pending() end
    local e = d.entry
    if e and not e.fd then
      local left = e.due - clock()
      if left > 0 then return d.timer:start(ms(left), 0, on_timer) end
    end
    step()
  end

  -- waits for what the last resume asked: its descriptor (else its hint) and its time
  function arm(e)
    d.entry = e
    local wait = e.due - clock()
    if e.fd then
      local p = not watched[e.fd] and uv.new_poll(e.fd)
      if p and p:start(e.events, step) then
        d.poll, d.fd, d.p = p, e.fd, e.p
        watched[e.fd] = true
        driven.watch(e.p, d.closing)
      else
        close(p)
        wait = e.hint -- a descriptor libuv cannot watch: resume after the seconds yielded
      end
    end
    if wait < huge then d.timer:start(ms(wait), 0, on_timer) end
  end

  -- the first resume: at once, or on the schedule of an earlier driver
  function d.start()
    local e = driven.entry(co, clock)
    if e then arm(e) else d.timer:start(0, 0, step) end
  end
  return d
end

-- drive(x) -> handle. x: a coroutine, an object with a :coroutine() method (a stream), or a list
-- of them. handle:stop() stops driving them at once (their handles closed; the coroutines stay
-- as they are and can be driven again, on their schedule). A coroutine that raises: its error is
-- raised in the luv callback that resumed it (luv's own report of callback errors); the others
-- go on.
function M.drive(x)
  local list = driven.coroutines(x, "ibkr.luv.drive", 2)
  luv(2)
  local slots = {}
  local handle = {}
  local function on_stop(d) slots[d] = nil end
  for _, co in ipairs(driven.claim(list, "ibkr.luv.drive", 2)) do
    local d = new_slot(co, on_stop)
    slots[d] = true
    d.start()
  end
  function handle.stop()
    for d in pairs(slots) do d.finish() end
  end
  return handle
end

return M
