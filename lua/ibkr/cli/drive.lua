-- Runs one coroutine (a command's work on a cooperative session, or a keep-alive) until it
-- ends, a deadline passes or a caught signal arrives -- whichever comes first, each noticed at
-- once: between resumes it waits in core.poll on the descriptor the coroutine waits on and on the
-- signal handler's self-pipe (core.signal_fd), which a caught SIGINT/SIGTERM makes readable.
-- A coroutine that is cut short is closed, which frees its in-flight request.
--
-- Beside the coroutine it can step "watchers" (the keep-alive's listener, its connections, the
-- --on-change runner): pollables (cqueues' convention: :pollfd(), :events(), :timeout()) that also
-- have :step(ready), called when their descriptor is ready (ready = true) or their timeout has
-- passed (false). A watcher's step must be short and never block: the coroutine's resume comes
-- right after the watchers' turn in every round, so no watcher can hold it back for long.

local core = require("ibkr.core")

local M = {}

-- A set of watchers, in the order they were added; add and remove at any time (also from a step).
local Set = {}
Set.__index = Set

function M.watchers() return setmetatable({ list = {}, at = {} }, Set) end

function Set:add(w)
  if self.at[w] then return end
  self.list[#self.list + 1] = w
  self.at[w] = #self.list
end

function Set:remove(w)
  local i = self.at[w]
  if not i then return end
  table.remove(self.list, i)
  self.at[w] = nil
  for j = i, #self.list do self.at[self.list[j]] = j end
end

function Set:count() return #self.list end

-- The file descriptor of a pollable, its events and its timeout (each nil when it has none).
local function poll_of(y)
  if y == nil or type(y) == "number" then return nil end
  local ok, fd = pcall(function() return y:pollfd() end)
  local ok2, t = pcall(function() return y:timeout() end)
  local ok3, ev = pcall(function() return y.events and y:events() end)
  fd = ok and math.tointeger(fd) or nil
  if fd and fd < 0 then fd = nil end
  return fd, ok2 and type(t) == "number" and t or nil, ok3 and (ev == "w" or ev == "rw") and ev or "r"
end

-- What a resume yielded -> seconds to wait, a file descriptor to wait on (or nil), its events.
-- docs/hosts.md: seconds (always; a small hint while a request is in flight), then, while a
-- request is in flight, the request as a pollable: then wait on its descriptor until its
-- timeout instead of waking at every hint. A lone pollable is taken the same way.
local function wait_of(y, y2)
  local fd, t, ev = poll_of(type(y) == "number" and y2 or y)
  if fd then return math.min(t or 1, 1), fd, ev end -- (at most 1 s: a resume costs nothing)
  if type(y) == "number" and y == y and y >= 0 then return y end
  return 0.01
end

-- One round of the watchers: each whose descriptor was ready, or whose time has come, steps.
-- A step that raises is a bug of that watcher: it is removed, the error passed to on_error.
local function step_watchers(set, ready, wake, clock, on_error)
  local now = clock()
  local list = table.move(set.list, 1, #set.list, 1, {})
  for _, w in ipairs(list) do
    if set.at[w] and (ready[w] or (wake[w] and now >= wake[w])) then
      local ok, e = pcall(w.step, w, ready[w] == true)
      if not ok then
        set:remove(w)
        if on_error then on_error(e) end
      end
    end
  end
end

-- The descriptors to wait on: the signal pipe, the coroutine's, every watcher's; and the
-- earliest watcher timeout (absolute). `owner[i]` is what fds[i] belongs to (true: the coroutine).
local function poll_set(set, co_fd, co_ev, wake, clock)
  local fds, evs, owner = {}, {}, {}
  local sig = core.signal_fd and core.signal_fd()
  if sig then fds[1], evs[1], owner[1] = sig, "r", false end
  if co_fd then fds[#fds + 1], evs[#fds + 1], owner[#fds + 1] = co_fd, co_ev, true end
  local earliest
  if set then
    local now = clock()
    for _, w in ipairs(set.list) do
      local fd, t, ev = poll_of(w)
      if fd then
        local n = #fds + 1
        fds[n], evs[n], owner[n] = fd, ev, w
      end
      wake[w] = t and now + t or nil
      if t and (not earliest or now + t < earliest) then earliest = now + t end
    end
  end
  return fds, evs, owner, earliest
end

-- run(co, opts) ->
--   "done", results...   the coroutine returned (results packed as a table with n)
--   "deadline"           the deadline passed first
--   "signal", name       a caught signal arrived first ("INT", "TERM")
-- opts: deadline (monotonic seconds), after (called after each resume of co), watchers (a set
-- from M.watchers()), health (a table kept up to date: health.due = when co asked to be resumed
-- next; health.late = how late its last resume for its time came, at health.resumed; monotonic
-- seconds), on_error (gets what a watcher's step raised).
-- A coroutine that raises makes run raise that error.
function M.run(co, opts)
  opts = opts or {}
  local deadline, set, health = opts.deadline, opts.watchers, opts.health
  local clock = core.monotonic
  local due, co_fd, co_ev, co_ready = 0, nil, nil, false
  -- watcher -> its descriptor was ready at the last poll; -> when its timeout comes. Weak keys: a
  -- watcher removed from the set (a closed connection) is not kept alive here.
  local ready = setmetatable({}, { __mode = "k" })
  local wake = setmetatable({}, { __mode = "k" })
  while true do
    if set then step_watchers(set, ready, wake, clock, opts.on_error) end
    if co_ready or clock() >= due then
      if health and health.due and not co_ready then -- resumed for its time: how late
        local now = clock()
        health.late, health.resumed = now - due, now
      end
      local r = table.pack(coroutine.resume(co))
      if not r[1] then
        error(debug.traceback(co, tostring(r[2])), 0)
      end
      if opts.after then opts.after() end
      if coroutine.status(co) == "dead" then
        return "done", table.pack(table.unpack(r, 2, r.n))
      end
      local secs
      secs, co_fd, co_ev = wait_of(r[2], r[3])
      due = clock() + secs
      if health then health.due = due end
    end
    local sig = core.signal_caught()
    local now = clock()
    if not sig and deadline and now >= deadline then
      coroutine.close(co)
      return "deadline"
    end
    if sig then
      coroutine.close(co)
      return "signal", sig
    end
    local fds, evs, owner, earliest = poll_set(set, co_fd, co_ev, wake, clock)
    local untl = due
    if earliest and earliest < untl then untl = earliest end
    if deadline and deadline < untl then untl = deadline end
    local got = { core.poll(fds, math.max(0, untl - clock()), evs) }
    co_ready = false
    for k in pairs(ready) do ready[k] = nil end
    for _, i in ipairs(got) do
      local o = owner[i]
      if o == true then co_ready = true elseif o then ready[o] = true end
    end
  end
end

return M
