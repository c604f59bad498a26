-- ibkr-session keepalive: the library's keep-alive driven until --duration, SIGINT or SIGTERM.
-- Human mode: one line per state change on stdout; failures and repairs on stderr (the same
-- failure is said once until the session is ready again); a last line when it ends.
-- JSON mode: every event is one JSON line on stdout:
--   {"time":..., "event":"state", "state":..., "old":..., "detail":{...} | "error":{...}}
--   {"time":..., "event":"error", "error":{...}}
--   {"time":..., "event":"repair", "action":..., "ok":bool, "result":{...} | "error":{...}}
--   {"time":..., "event":"push", "push":"lost"|"reconnected"|"authenticated", "error":{...}}  (--push)
--   {"time":..., "event":"stopped", "reason":"signal"|"duration", "signal":"INT"|"TERM",
--    "state":..., "exit":N}
-- Every text that came from the gateway is escaped onto one bounded line (ibkr/cli/out.lua),
-- so nothing the gateway sends can forge a line.

local ibkr = require("ibkr")
local core = require("ibkr.core")
local out = require("ibkr.cli.out")
local report = require("ibkr.cli.report")
local drive = require("ibkr.cli.drive")

local M = {}

local function timestamp()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

-- The three printers of events, for human or JSON output.
local function printers(o, io_)
  local stdout, stderr = io_.stdout, io_.stderr
  local function emit(doc)
    doc.time = timestamp()
    stdout:write(out.json(doc), "\n")
    stdout:flush()
  end
  local function say(f, ...)
    f:write(timestamp(), " ", ...)
    f:write("\n")
    f:flush()
  end
  local p = {}
  function p.state(new, old, detail)
    if o.json then
      local doc = { event = "state", state = new, old = old }
      if ibkr.is_error(detail) then doc.error = report.plain_error(detail) else doc.detail = detail end
      return emit(doc)
    end
    say(stdout, new, old and (" (was " .. old .. ")") or "", ": ", report.describe(detail))
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
  return p
end

-- The keep-alive's callbacks. An error is said once: the same failure every retry_interval only
-- until the session is ready again, and not at all when the state change it causes (reported in
-- the same resume) or the repair it failed carries it. So errors wait in `pending` until the
-- next event or the end of the resume (flush).
local function callbacks(p, ka)
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

-- Runs the keep-alive; returns the exit code: the last state's code after --duration,
-- 128 + the signal's number (130 SIGINT, 143 SIGTERM) after a signal.
function M.run(s, o, io_)
  local p = printers(o, io_)
  local ka = {}
  callbacks(p, ka)
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
    after = ka.flush })
  ka.flush()
  local last = ka.last
  if coroutine.status(co) ~= "dead" then coroutine.close(co) end
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
