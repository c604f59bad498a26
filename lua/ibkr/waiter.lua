-- Waiters: how one call of a session passes time (ibkr/call.lua asks its waiter).
--
-- waiter.new(mode, live, gone [, sleep [, chunk]]) -> waiter, a table with
--   wait(seconds, pollable)  passes time. `seconds` is a hint: how long until the caller wants to
--                 look again. `pollable`, when a request is in flight, is that request: its
--                 :pollfd() becomes readable when the answer is there, :events() is "r",
--                 :timeout() the seconds after which to look anyway (cqueues' convention).
--   step          true: the exchange runs on the engine thread (core start/step) and wait() is
--                 called between steps; false: core perform (blocking, in place)
--   live()        false once the work must stop (session closed, keep-alive stopped): the call
--                 then returns gone(method, path) at its next wake-up
--   gone(method, path)  that error
--   chunk         nil, or seconds: waits longer than this are cut into slices so that live() is
--                 looked at between them (an inline loop whose host sleep cannot be interrupted)
-- mode is one of
--   "block"  wait with sleep(seconds) (core.sleep by default); exchanges block in place
--   "yield"  wait by coroutine.yield(seconds, pollable): the resumer gets both values, a resumer
--            that only reads the seconds keeps working (it resumes after them and the call steps)
--   "host"   wait with sleep(seconds), a host's own sleep (cqueues.sleep, copas.pause...);
--            exchanges run on the engine thread
local core = require("ibkr.core")
local driven = require("ibkr.driven")

local M = {}

-- A coroutine closed while suspended here closes the request it waits on (the caller's
-- to-be-closed variable, ibkr/call.lua): the guard, closed first, makes the drivers that watch
-- the request's descriptor stop watching it before it is closed (ibkr/driven.lua).
local function yield(secs, pollable)
  if not pollable then return coroutine.yield(secs) end
  local guard <close> = driven.guard(pollable)
  coroutine.yield(secs, pollable)
  guard[1] = nil -- resumed: no driver watches it now
end

function M.new(mode, live, gone, sleep, chunk)
  assert(type(live) == "function" and type(gone) == "function", "waiter: live and gone are functions")
  local w = { live = live, gone = gone, chunk = chunk }
  if mode == "yield" then
    w.wait, w.step = yield, true
  elseif mode == "block" or mode == "host" then
    sleep = sleep or core.sleep
    w.wait = function(secs) sleep(secs) end
    w.step = mode == "host"
  else
    error("waiter: unknown mode '" .. tostring(mode) .. "'", 2)
  end
  return w
end

return M
