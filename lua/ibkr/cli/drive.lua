-- Runs one coroutine (a command's work on a cooperative session, or a keep-alive) until it
-- ends, a deadline passes or a caught signal arrives -- whichever comes first, each noticed at
-- once: between resumes it waits with core.signal_wait, which a caught SIGINT/SIGTERM ends.
-- A coroutine that is cut short is closed, which frees its in-flight request.

local core = require("ibkr.core")

local M = {}

-- The file descriptor of a pollable (cqueues' convention: :pollfd(), :timeout()), or nil when it
-- has none now (-1: a stream between two connections), and its timeout.
local function poll_of(y)
  if y == nil or type(y) == "number" then return nil end
  local ok, fd = pcall(function() return y:pollfd() end)
  local ok2, t = pcall(function() return y:timeout() end)
  fd = ok and math.tointeger(fd) or nil
  return fd and fd >= 0 and fd or nil, ok2 and type(t) == "number" and t or nil
end

-- What a resume yielded -> seconds to wait, and a file descriptor to wait on (or nil).
-- docs/hosts.md: seconds (always; a small hint while a request is in flight), then, while a
-- request is in flight, the request as a pollable: then wait on its descriptor until its
-- timeout instead of waking at every hint. A lone pollable is taken the same way.
local function wait_of(y, y2)
  local fd, t = poll_of(type(y) == "number" and y2 or y)
  if fd then return math.min(t or 1, 1), fd end -- (at most 1 s: a resume costs nothing)
  if type(y) == "number" and y == y and y >= 0 then return y end
  return 0.01
end

-- run(co, {deadline = monotonic seconds or nil, after = function called after each resume}) ->
--   "done", results...   the coroutine returned (results packed as a table with n)
--   "deadline"           the deadline passed first
--   "signal", name       a caught signal arrived first ("INT", "TERM")
-- A coroutine that raises makes run raise that error.
function M.run(co, opts)
  local deadline = opts and opts.deadline
  local clock = core.monotonic
  while true do
    local r = table.pack(coroutine.resume(co))
    if not r[1] then
      error(debug.traceback(co, tostring(r[2])), 0)
    end
    if opts and opts.after then opts.after() end
    if coroutine.status(co) == "dead" then
      return "done", table.pack(table.unpack(r, 2, r.n))
    end
    local secs, fd = wait_of(r[2], r[3])
    local sig = core.signal_caught()
    local left = deadline and deadline - clock()
    if not sig and left and left <= 0 then
      coroutine.close(co)
      return "deadline"
    end
    if left and secs > left then secs = left end
    if not sig and secs > 0 then sig = core.signal_wait(secs, fd) end
    if sig then
      coroutine.close(co)
      return "signal", sig
    end
  end
end

return M
