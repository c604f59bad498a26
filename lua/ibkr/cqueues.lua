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

-- the coroutines being driven now, by any drive() (one driver at a time)
local driving = setmetatable({}, { __mode = "k" })

-- Waits for what the last resume asked (entry e), or the stop. Returns when co is to be resumed
-- (or the driver stopped).
local function wait_for(e, h)
  while not h.stopped do
    local left = e.due - clock()
    if e.fd then
      local limit = left < huge and (left > 0 and left or 0) or nil
      local p = { pollfd = e.fd, events = e.events, timeout = limit }
      cqueues.poll(p, h.stopping)
      cqueues.cancel(e.fd) -- the resume may close it: cqueues forgets it first
      return
    end
    if left <= 0 then return end
    cqueues.poll(h.stopping, left)
  end
end

local function drive_one(co, h)
  local e = driven.entry(co, clock) -- an earlier driver's schedule, or resume at once
  while not h.stopped and status(co) == "suspended" do
    if e then wait_for(e, h) end
    if h.stopped or status(co) ~= "suspended" then break end
    local ok, got = pcall(driven.resume, co, clock, true)
    if not ok then
      if driving[co] == h then driving[co] = nil end
      error(got, 0) -- cq:loop() returns false, this error
    end
    e = got
    if not e then break end
  end
  if driving[co] == h then driving[co] = nil end
end

-- drive(cq, x) -> handle. cq: a cqueues controller (cqueues.new()); x: a coroutine, an object
-- with a :coroutine() method (a stream), or a list of them. handle:stop() ends driving them at
-- the controller's next step (the coroutines stay as they are and can be driven again, on their
-- schedule). A coroutine that raises ends its thread with that error: cq:loop() (or cq:step())
-- returns false and it, as for any thread of the controller; the others go on.
function M.drive(cq, x)
  load(2)
  if cqueues.type(cq) ~= "controller" then
    error("ibkr.cqueues.drive: argument 1 must be a cqueues controller (cqueues.new()), not a "
      .. type(cq), 2)
  end
  local list = driven.coroutines(x, "ibkr.cqueues.drive", 2)
  for i, co in ipairs(list) do
    if driving[co] then error("ibkr.cqueues.drive: coroutine " .. i .. " is already being driven", 2) end
  end
  local h = { stopped = false, stopping = condition.new() }
  for _, co in ipairs(list) do
    if status(co) == "suspended" and not driving[co] then
      driving[co] = h
      cq:wrap(drive_one, co, h)
    end
  end
  return {
    stop = function()
      h.stopped = true
      h.stopping:signal()
      for co, owner in pairs(driving) do
        if owner == h then driving[co] = nil end
      end
    end,
  }
end

return M
