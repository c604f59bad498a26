-- ibkr-session keepalive: the library's keep-alive driven until --duration, SIGINT or SIGTERM;
-- with --listen, the operators' endpoint (ibkr/cli/listen.lua, ibkr/cli/endpoints.lua), with
-- --on-change, the command run on every state change (ibkr/cli/alert.lua), both on the same loop.
-- Human mode: one line per state change on stdout; failures and repairs on stderr (the same
-- failure is said once until the session is ready again); a last line when it ends.
-- JSON mode: every event is one JSON line on stdout, each with "time", "event" and "state" (the
-- current state, null before the first):
--   {"event":"state", "old":..., "seconds":S in the old state, "detail":{...} | "error":{...}}
--   {"event":"error", "error":{...}}
--   {"event":"repair", "action":..., "ok":bool, "result":{...} | "error":{...}}
--   {"event":"push", "push":"lost"|"reconnected"|"authenticated", "error":{...}}  (--push)
--   {"event":"listening", "url":..., "address":..., "port":N}
--   {"event":"on_change", "outcome":"ok"|"failed"|"killed"|"error", "exit":N | "signal":N,
--    "seconds":S, "for_state":..., "previous":..., "runs":{...}}
--   {"event":"on_change_output", "stream":"stdout"|"stderr", "line":...}
--   {"event":"on_change_dropped", "dropped":N, ...}
--   {"event":"stopped", "reason":"signal"|"duration", "signal":"INT"|"TERM", "exit":N}
-- Every text that came from the gateway is escaped onto one bounded line (ibkr/cli/out.lua),
-- so nothing the gateway sends can forge a line.

local ibkr = require("ibkr")
local core = require("ibkr.core")
local out = require("ibkr.cli.out")
local report = require("ibkr.cli.report")
local drive = require("ibkr.cli.drive")
local metrics = require("ibkr.metrics")

local M = {}

local function timestamp()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

-- The printers of events, for human or JSON output. `cur.state` is the current state (JSON
-- lines carry it), `cur.since` when it began (monotonic), `cur.entered` its state line's time
-- (what /readyz says as "since").
local function printers(o, io_, cur)
  local stdout, stderr = io_.stdout, io_.stderr
  local function emit(doc)
    doc.time = doc.time or timestamp()
    if doc.state == nil then doc.state = cur.state or out.null end
    stdout:write(out.json(doc), "\n")
    stdout:flush()
  end
  local function say_at(stamp, f, ...)
    f:write(stamp, " ", ...)
    f:write("\n")
    f:flush()
  end
  local function say(f, ...) return say_at(timestamp(), f, ...) end
  local p = {}
  function p.state(new, old, detail)
    local now = core.monotonic()
    local was = cur.since and now - cur.since
    local stamp = timestamp()
    cur.state, cur.since, cur.entered = new, now, stamp
    if o.json then
      local doc = { event = "state", state = new, old = old, seconds = was, time = stamp }
      if ibkr.is_error(detail) then doc.error = report.plain_error(detail) else doc.detail = detail end
      return emit(doc)
    end
    say_at(stamp, stdout, new, old and (" (was " .. old .. ")") or "", ": ", report.describe(detail))
  end
  function p.error(err)
    if o.json then return emit{ event = "error", error = report.plain_error(err) } end
    say(stderr, "error: ", report.describe(err))
  end
  function p.repair(action, res, err)
    if o.json then
      return emit{ event = "repair", action = tostring(action), ok = res ~= nil and err == nil, result = res,
        error = ibkr.is_error(err) and report.plain_error(err) or nil }
    end
    -- the library passes a status only when the repair led to a ready session
    local how = (res ~= nil and err == nil) and "ok: ready"
      or ("failed: " .. (err ~= nil and report.describe(err) or "the session is still not ready"))
    say(stderr, "repair: ", out.text(tostring(action), 64), " ", how)
  end
  -- --push: the channel's own events (lost, reconnected, authenticated), on stderr
  function p.push(msg)
    if msg.topic ~= "ibkr" then return end
    local ev = out.text(tostring(msg.event), 64)
    if o.json then
      return emit{ event = "push", push = ev, down = msg.down, attempts = msg.attempts,
        error = ibkr.is_error(msg.error) and report.plain_error(msg.error) or nil }
    end
    say(stderr, "push: ", ev, msg.error and (": " .. report.describe(msg.error)) or "")
  end
  function p.stopped(reason, sig, last, code)
    if o.json then
      return emit{ event = "stopped", reason = reason, signal = sig, state = last, exit = code }
    end
    local why = reason == "signal" and ("stopped by SIG" .. sig) or "stopped after --duration"
    say(stdout, why, " (last state: ", tostring(last or "none"), ", exit ", tostring(code), ")")
  end
  function p.listening(l)
    local host = l.address:find(":", 1, true) and ("[" .. l.address .. "]") or l.address
    local url = "http://" .. host .. ":" .. l.port
    if o.json then return emit{ event = "listening", url = url, address = l.address, port = l.port } end
    say(stdout, "listening on ", url, " (/livez /readyz /metrics)")
  end
  function p.internal(e)
    if o.json then return emit{ event = "internal_error", error = out.text(tostring(e), 1000) } end
    say(stderr, "internal error (the keep-alive goes on): ", out.text(tostring(e), 1000))
  end
  -- --on-change (ibkr/cli/alert.lua): the command's output, outcome, dropped changes
  function p.alert(event, f)
    if event == "output" then
      if o.json then return emit{ event = "on_change_output", stream = f.stream, line = f.line } end
      return say(f.stream == "stderr" and stderr or stdout, "on-change: ", out.text(f.line, 2 * out.MAX_TEXT))
    elseif event == "done" then
      if o.json then
        return emit{ event = "on_change", outcome = f.outcome, exit = f.exit, signal = f.signal,
          seconds = f.seconds, for_state = f.state, previous = f.previous, error = f.error,
          at_exit = f.at_exit }
      end
      if f.outcome == "ok" then return end
      local what = f.at_exit and "still running at exit: ended with its process group"
        or f.outcome == "killed" and string.format("ran over %g s: killed with its process group", f.timeout)
        or f.outcome == "error" and ("cannot start: " .. out.text(f.error))
        or (f.exit and ("exited with status " .. f.exit) or ("ended by signal " .. tostring(f.signal)))
      return say(stderr, "on-change: ", what, " (for ", f.state,
        f.previous ~= "" and (", was " .. f.previous) or "", ")")
    elseif event == "dropped" then
      if o.json then
        return emit{ event = "on_change_dropped", dropped = f.dropped, for_state = f.state,
          previous = f.previous, at_exit = f.at_exit }
      end
      if f.at_exit then
        return say(stderr, "on-change: ", f.at_exit, " queued change(s) not run at exit")
      end
      return say(stderr, "on-change: queue full: dropped the change to ", f.state,
        f.previous ~= "" and (" (was " .. f.previous .. ")") or "", "; ", f.dropped, " dropped so far")
    elseif event == "cut" then
      if o.json then return emit{ event = "on_change_cut", bytes = f.bytes } end
      return say(stderr, "on-change: output cut after ", f.bytes, " bytes (the rest is read and dropped)")
    end
  end
  return p
end

-- The keep-alive's callbacks. An error is said once: the same failure every retry_interval only
-- until the session is ready again, and not at all when the state change it causes (reported in
-- the same resume) or the repair it failed carries it. So errors wait in `pending` until the
-- next event or the end of the resume (flush).
local function callbacks(p, ka, runner)
  local last_error, pending
  local function flush()
    if pending then p.error(pending) end
    pending = nil
  end
  ka.flush = flush
  ka.on_state = function(new, old, detail)
    if pending and ibkr.is_error(detail) and tostring(detail) == tostring(pending) then
      pending = nil
    end
    flush()
    ka.last = new
    if new == "ready" then last_error = nil end
    p.state(new, old, detail)
    if runner then runner:change(new, old, report.describe(detail)) end
  end
  ka.on_error = function(err)
    local line = tostring(err)
    if line ~= last_error then
      flush()
      last_error = line
      pending = err
    end
  end
  ka.on_repair = function(action, res, err)
    if pending and err ~= nil and tostring(err) == tostring(pending) then pending = nil end
    flush()
    p.repair(action, res, err)
  end
end

-- The operators' side of the loop: the --listen endpoint and the --on-change runner, as watchers
-- of drive.run. Returns {set, health, listener, runner}, or nil, message (a usage error).
local function sidecar(s, o, p, cur)
  local side = { set = drive.watchers(), health = {} }
  if o.on_change then
    side.runner = require("ibkr.cli.alert").new{ command = o.on_change, url = s.base_url, set = side.set,
      say = p.alert, timeout = o.on_change_timeout }
  end
  if o.listen then
    local handler = require("ibkr.cli.endpoints").handler{ session = s, health = side.health, push = o.push,
      entered = function() return cur.state, cur.entered end,
      families = function()
        local fams = side.listener:families(metrics)
        for _, f in ipairs(side.runner and side.runner:families(metrics) or {}) do fams[#fams + 1] = f end
        return fams
      end }
    local l, err = require("ibkr.cli.listen").new{ host = o.listen.host, port = o.listen.port,
      set = side.set, answer = handler }
    if not l then return nil, err end
    side.listener = l
    p.listening(l)
  end
  return side
end

-- Runs the keep-alive; returns the exit code: the last state's code after --duration,
-- 128 + the signal's number (130 SIGINT, 143 SIGTERM) after a signal. Or nil, message when
-- --listen cannot listen (a usage error).
function M.run(s, o, io_)
  local cur = {}
  local p = printers(o, io_, cur)
  local side, serr = sidecar(s, o, p, cur)
  if not side then return nil, serr end
  local ka = {}
  callbacks(p, ka, side.runner)
  local interval = o.interval or 60
  local co = s:keepalive{
    interval = interval,
    retry_interval = o.retry_interval or math.min(5, interval),
    validate_interval = o.validate_interval,
    init = not o.no_init,
    compete = o.compete == true,
    on_state = ka.on_state, on_error = ka.on_error, on_repair = ka.on_repair,
    push = o.push and { on_message = p.push } or nil,
  }
  local how, sig = drive.run(co, { deadline = o.duration and core.monotonic() + o.duration,
    after = ka.flush, watchers = side.set, health = side.health, on_error = p.internal })
  ka.flush()
  local last = ka.last
  if coroutine.status(co) ~= "dead" then coroutine.close(co) end
  if side.listener then side.listener:close() end
  if side.runner then side.runner:close() end
  local code
  if how == "signal" then
    code = report.SIGNAL_EXIT[sig] or 1
  else
    code = last and report.code_of_state(last) or 1
  end
  p.stopped(how == "signal" and "signal" or "duration", sig, last, code)
  return code
end

return M
