-- ibkr.cqueues: drives keep-alives, streams and cooperative workers inside a cqueues controller
-- (Debian: lua-cqueues), next to its other threads (docs/hosts.md):
--   local h = require("ibkr.cqueues").drive(cq, x)   -- x: anything ibkr.run accepts
--   assert(cq:loop())                                -- returns once all of them ended (or h:stop())
-- Each coroutine gets a cqueues thread that resumes it and waits with cqueues.poll: on the
-- request's descriptor while a request is in flight (woken when its answer is there, or at its
-- deadline), else for the seconds it yielded; h:stop() wakes them all at once. A resume takes well
-- under a millisecond (the exchange runs in the C core): the controller's other threads and
-- timers are never held back.
-- cqueues is required when drive() is first called: it is not a dependency of ibkr.

local core = require("ibkr.core")
local driven = require("ibkr.driven")

local M = {}

local status, huge = coroutine.status, math.huge
local clock = core.monotonic

local cqueues, condition
local function load(level)
  if cqueues == nil then
    local ok, m = pcall(require, "cqueues")
    local ok2, c = pcall(require, "cqueues.condition")
    if not (ok and ok2) then
      error("ibkr.cqueues: the cqueues module is not installed (Debian: apt install lua-cqueues): "
        .. tostring(ok and c or m), level + 1)
    end
    cqueues, condition = m, c
  end
end

-- the descriptor a thread polls is cancelled: every controller forgets it and wakes the threads
-- that poll it (cqueues.cancel works outside the controller's loop too)
local function cancel(slot)
  if slot.fd then
    local fd = slot.fd
    slot.fd = nil
    cqueues.cancel(fd)
  end
end

-- Waits for what the last resume asked (entry e), or the stop. Returns when co is to be resumed
-- (or the driver stopped). While it polls a pollable's descriptor, `slot.fd` is that descriptor
-- and slot.closing (registered with ibkr/driven.lua) cancels it: a coroutine closed from
-- elsewhere closes the request's descriptor, and the controller must forget it first.
local function wait_for(e, h, slot)
  while not h.stopped do
    local left = e.due - clock()
    if e.fd then
      local limit = left < huge and (left > 0 and left or 0) or nil
      local p = { pollfd = e.fd, events = e.events, timeout = limit }
      slot.fd = e.fd
      driven.watch(e.p, slot.closing)
      cqueues.poll(p, h.stopping)
      driven.unwatch(e.p, slot.closing)
      cancel(slot) -- the resume may close it: cqueues forgets it first (unless done already)
      return
    end
    if left <= 0 then return end
    cqueues.poll(h.stopping, left)
  end
end

-- co's thread ends: it is no longer driven (unless stop() ended that already)
local function done(co, h, slot)
  if h.slots[co] == slot then
    h.slots[co] = nil
    driven.release(co)
  end
end

local function drive_one(co, h, slot)
  local e = driven.entry(co, clock) -- an earlier driver's schedule, or resume at once
  while not h.stopped and status(co) == "suspended" do
    if e then wait_for(e, h, slot) end
    if h.stopped or status(co) ~= "suspended" then break end
    local ok, got = pcall(driven.resume, co, clock, true)
    if not ok then
      done(co, h, slot)
      error(got, 0) -- cq:loop() returns false, this error
    end
    e = got
    if not e then break end
  end
  done(co, h, slot)
end

-- drive(cq, x) -> handle. cq: a cqueues controller (cqueues.new()); x: a coroutine, an object
-- with a :coroutine() method (a stream), or a list of them. handle:stop() ends driving them at
-- the controller's next step (the coroutines stay as they are and can be driven again, on their
-- schedule; the descriptors its threads polled are forgotten at once). A coroutine that raises
-- ends its thread with that error: cq:loop() (or cq:step()) returns false and it, as for any
-- thread of the controller; the others go on.
function M.drive(cq, x)
  load(2)
  if cqueues.type(cq) ~= "controller" then
    error("ibkr.cqueues.drive: argument 1 must be a cqueues controller (cqueues.new()), not a "
      .. type(cq), 2)
  end
  local list = driven.coroutines(x, "ibkr.cqueues.drive", 2)
  local h = { stopped = false, stopping = condition.new(), slots = {} }
  for _, co in ipairs(driven.claim(list, "ibkr.cqueues.drive", 2)) do
    local slot = {}
    function slot.closing() cancel(slot) end
    h.slots[co] = slot
    cq:wrap(drive_one, co, h, slot)
  end
  return {
    stop = function()
      h.stopped = true
      h.stopping:signal()
      for co, slot in pairs(h.slots) do
        cancel(slot)
        h.slots[co] = nil
        driven.release(co)
      end
    end,
  }
end

return M
