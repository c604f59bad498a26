-- ibkr-session keepalive --on-change CMD: `/bin/sh -c CMD` on every state change, one at a time and
-- in order, never blocking the keep-alive. The running command is a watcher of the keep-alive's
-- loop (ibkr/cli/drive.lua): a process object of the core (core.spawn, src/proc.c) whose
-- descriptor wakes the loop when it prints or ends.
--
-- Its environment: IBKR_STATE, IBKR_PREVIOUS_STATE ("" for the first state), IBKR_DETAIL (one
-- printable line, at most DETAIL_MAX bytes), IBKR_URL (the base URL without credentials),
-- IBKR_TIME (when the change happened, UTC). Its stdout and stderr are passed through line by line,
-- prefixed, at most OUTPUT_MAX bytes a run (the rest is read and dropped). A non-zero exit is
-- reported; a run over `timeout` seconds gets SIGTERM, and SIGKILL GRACE seconds later (or as soon
-- as the shell has gone), both sent to its whole process group. Changes that come while a command
-- runs wait in a queue of QUEUE_MAX; when it is full the oldest is dropped and counted. What the
-- command leaves running in the background once the shell has ended is its own business.

local core = require("ibkr.core")
local out = require("ibkr.cli.out")

local M = {}

M.TIMEOUT = 30        -- seconds a command may run
M.GRACE = 5           -- seconds between SIGTERM and SIGKILL
M.EXIT_GRACE = 0.2    -- the same when ibkr-session ends
M.QUEUE_MAX = 16      -- changes waiting while a command runs
M.OUTPUT_MAX = 65536  -- bytes of a run's output passed through
M.LINE_MAX = 1000     -- bytes of one line passed through (longer ones are cut)
M.DETAIL_MAX = 300    -- bytes of IBKR_DETAIL
M.READ_MAX = 16384    -- bytes read from each pipe per step
M.SHELL = "/bin/sh"

local Runner = {}
Runner.__index = Runner

-- new{command=, url=, set=, say=function(event, fields), clock=, timeout=, grace=} -> runner, a
-- watcher of `set` (a drive.watchers() set) from now on. timeout, grace: seconds (TIMEOUT, GRACE).
-- say(event, fields) reports: "output" {stream, line}, "done" {outcome, exit|signal, seconds, state,
-- previous}, "dropped" {state, previous, dropped}, "cut" {stream?, bytes}.
function M.new(o)
  local r = setmetatable({
    command = o.command, url = out.text(o.url or "", 2000), set = o.set, say = o.say,
    clock = o.clock or core.monotonic, limit = o.timeout or M.TIMEOUT, grace = o.grace or M.GRACE,
    queue = {}, head = 1, tail = 0,
    counts = { ok = 0, failed = 0, killed = 0, error = 0, dropped = 0 },
  }, Runner)
  o.set:add(r)
  return r
end

function Runner:queued() return self.tail - self.head + 1 end

-- A state change (the keep-alive's on_state): queued; the runner's next step starts it when
-- nothing runs (so the keep-alive's resume never waits for a fork).
-- IBKR_DETAIL: one printable line of at most DETAIL_MAX bytes, the "…" of a cut included; cut
-- between characters and escapes (out.text), never inside one.
local function detail_line(detail)
  local s = (tostring(detail or "")):gsub("[\r\n]+", " ")
  local line = out.text(s, M.DETAIL_MAX)
  if #line > M.DETAIL_MAX then line = out.text(s, M.DETAIL_MAX - #"\u{2026}") end
  return line
end

function Runner:change(new, old, detail)
  local item = { state = new, previous = old or "", time = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    detail = detail_line(detail) }
  if self:queued() >= M.QUEUE_MAX then
    local gone = self.queue[self.head]
    self.queue[self.head] = nil
    self.head = self.head + 1
    self.counts.dropped = self.counts.dropped + 1
    self.say("dropped", { state = gone.state, previous = gone.previous, dropped = self.counts.dropped })
  end
  self.tail = self.tail + 1
  self.queue[self.tail] = item
end

-- Starts the oldest queued change's command, if any.
function Runner:next()
  while self:queued() > 0 and not self.proc do
    local item = self.queue[self.head]
    self.queue[self.head] = nil
    self.head = self.head + 1
    local p, err = core.spawn({ M.SHELL, "-c", self.command }, {
      IBKR_STATE = item.state, IBKR_PREVIOUS_STATE = item.previous, IBKR_DETAIL = item.detail,
      IBKR_URL = self.url, IBKR_TIME = item.time })
    if p then
      self.proc, self.item = p, item
      self.started = self.clock()
      self.deadline, self.phase = self.started + self.limit, "run"
      self.passed, self.partial = 0, { stdout = "", stderr = "" }
    else
      self.counts.error = self.counts.error + 1
      self.say("done", { outcome = "error", error = err, state = item.state, previous = item.previous })
    end
  end
end

-- The watcher: the process's descriptor; its deadline (the run's, then the grace's); at once when
-- a change waits and nothing runs.
function Runner:pollfd() return self.proc and self.proc:pollfd() end
function Runner.events() return "r" end
function Runner:timeout()
  if not self.proc then return self:queued() > 0 and 0 or nil end
  local t = math.max(0, self.deadline - self.clock())
  local pt = self.proc:timeout()
  return pt and math.min(pt, t) or t
end

-- One line (or a cut piece of one) passed through, within the run's budget.
function Runner:line(stream, s)
  if self.passed >= M.OUTPUT_MAX then return end
  self.passed = self.passed + #s + 1
  self.say("output", { stream = stream, line = s })
  if self.passed >= M.OUTPUT_MAX then self.say("cut", { bytes = M.OUTPUT_MAX }) end
end

-- Splits new output of `stream` into lines, a line longer than LINE_MAX in pieces of LINE_MAX (so
-- that what is kept of a line with no end in sight stays bounded); `final`: the rest too.
function Runner:feed(stream, data, final)
  local buf = self.partial[stream] .. data
  if self.passed >= M.OUTPUT_MAX then buf = "" end -- read and dropped
  local i = 1
  while true do
    local nl = buf:find("\n", i, true)
    local stop = math.min(nl or math.huge, i + M.LINE_MAX)
    if stop > #buf and not (final and i <= #buf) then break end
    self:line(stream, buf:sub(i, stop - 1))
    i = (stop == nl) and nl + 1 or stop
  end
  self.partial[stream] = buf:sub(i)
end

function Runner:read(final)
  local o, e = self.proc:read(M.READ_MAX)
  self:feed("stdout", o or "", final)
  self:feed("stderr", e or "", final)
end

-- The command ended (how: "exit"/"signal"/"unknown", code): report, close, start the next one.
function Runner:finish(how, code)
  self:read(true)
  local item, killed = self.item, self.phase ~= "run"
  self.proc:close()
  self.proc = nil
  local outcome = killed and "killed" or ((how == "exit" and code == 0) and "ok" or "failed")
  self.counts[outcome] = self.counts[outcome] + 1
  self.say("done", { outcome = outcome, exit = how == "exit" and code or nil,
    signal = how == "signal" and code or nil, seconds = self.clock() - self.started,
    state = item.state, previous = item.previous, at_exit = self.phase == "exit" or nil,
    timeout = killed and self.limit or nil })
end

function Runner:step()
  local p = self.proc
  if not p then return self:next() end
  self:read(false)
  local now = self.clock()
  if self.phase == "run" then
    local how, code = p:wait()
    if how then return self:finish(how, code) end
    if now >= self.deadline then
      p:kill("TERM")
      self.phase, self.deadline = "term", now + self.grace
    end
  elseif self.phase == "term" then
    if p:wait(true) or now >= self.deadline then -- the shell is gone (a zombie still) or grace is over
      p:kill("KILL")
      self.phase, self.deadline = "reap", now + self.grace
    end
  end
  if self.phase == "reap" then
    local how, code = p:wait()
    if how then return self:finish(how, code) end
  end
end

-- At the end of ibkr-session: a running command gets SIGTERM, and SIGKILL EXIT_GRACE seconds later
-- at most (both to its process group), and is reported killed; queued changes are dropped and said.
function Runner:close()
  local p = self.proc
  if p then
    p:kill("TERM")
    local stop = self.clock() + M.EXIT_GRACE
    while not p:wait(true) and self.clock() < stop do
      core.poll({ p:pollfd() }, math.max(0, stop - self.clock()))
      self:read(false)
    end
    p:kill("KILL")
    self.phase = "exit"
    local how, code = p:wait() -- (nil when not gone yet: close() below reaps it if it can)
    self:finish(how or "signal", how and code or 9)
  end
  local n = self:queued()
  if n > 0 then
    self.counts.dropped = self.counts.dropped + n
    self.say("dropped", { dropped = self.counts.dropped, at_exit = n })
  end
  self.queue, self.head, self.tail = {}, 1, 0
  self.set:remove(self)
end

function Runner:families(metrics)
  local f = metrics.family("ibkr_on_change_runs_total", "counter",
    "--on-change commands run, by outcome (ok, failed: a non-zero exit, killed: ran over the time, "
    .. "error: could not start)")
  for _, k in ipairs{ "ok", "failed", "killed", "error" } do f:add(self.counts[k], { { "outcome", k } }) end
  return {
    f,
    metrics.family("ibkr_on_change_dropped_total", "counter",
      "State changes whose --on-change command never ran (the queue was full, or at exit)")
      :add(self.counts.dropped),
    metrics.family("ibkr_on_change_queued", "gauge", "State changes waiting for their --on-change command")
      :add(self:queued()),
  }
end

return M
