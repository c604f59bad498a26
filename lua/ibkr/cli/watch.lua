-- ibkr-session watch: every message the gateway pushes on its websocket, one line each, until
-- --duration, SIGINT or SIGTERM. The channel is a keep-alive's (s:keepalive{ push = ... }, tickles
-- only: watching repairs nothing), so the session stays alive while it is watched.
-- Human mode: "<time> <topic> <the message as JSON>" (cut at MAX_LINE bytes), and for the
-- channel's own events "<time> ibkr lost: <why>" / "reconnected (...)" / "authenticated".
-- JSON mode: {"time":..., "message":{...}} per message, then
--   {"time":..., "event":"stopped", "reason":"signal"|"duration", "signal":..., "open":bool, "exit":N}
-- Exit: 130/143 after a signal; after --duration 0 when the channel is open, else the code of
-- why it is not (2 unreachable, 3 login required, 1 otherwise): the channel's last loss, or the
-- session's state (or last failure) when it never got that far.

local core = require("ibkr.core")
local out = require("ibkr.cli.out")
local report = require("ibkr.cli.report")
local drive = require("ibkr.cli.drive")

local M = {}

M.MAX_LINE = 4000 -- bytes of one message's JSON in a human line

local function timestamp()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

-- One line for a channel event (topic "ibkr").
local function event_line(msg)
  if msg.event == "lost" then
    return "lost: " .. (msg.error and report.describe(msg.error) or "the channel closed")
  elseif msg.event == "reconnected" then
    return string.format("reconnected (down %.1f s, %d attempt%s)", tonumber(msg.down) or 0,
      math.tointeger(msg.attempts) or 0, msg.attempts == 1 and "" or "s")
  end
  return out.text(tostring(msg.event), 64)
end

local function printer(o, io_, seen)
  local stdout = io_.stdout
  return function(msg)
    if msg.topic == "system" and msg.success ~= nil then seen.open = true end
    if msg.topic == "ibkr" and msg.event == "lost" then seen.open, seen.err = false, msg.error end
    if msg.topic == "ibkr" and msg.event == "reconnected" then seen.open = true end
    if o.json then
      stdout:write(out.json{ time = timestamp(), message = msg }, "\n")
    elseif msg.topic == "ibkr" then
      stdout:write(timestamp(), " ibkr ", event_line(msg), "\n")
    else
      local topic = type(msg.topic) == "string" and out.text(msg.topic, 64) or "-"
      stdout:write(timestamp(), " ", topic, " ", out.text(out.json(msg), M.MAX_LINE), "\n")
    end
    stdout:flush()
  end
end

function M.run(s, o, io_)
  local seen = { open = false }
  local co = s:keepalive{ init = false, push = { topics = o.topic, on_message = printer(o, io_, seen) } }
  local how, sig = drive.run(co, { deadline = o.duration and core.monotonic() + o.duration })
  if coroutine.status(co) ~= "dead" then coroutine.close(co) end
  local code
  if how == "signal" then code = report.SIGNAL_EXIT[sig] or 1
  elseif seen.open then code = 0
  else -- why it is not open: the channel's loss, else the session's state or its last failure
    local err = seen.err or s:stats().last_error
    code = s:state() and not seen.err and report.code_of_state((s:state()))
      or err and report.code_of_error(err) or 1
    -- a ready session whose channel never opened (upgraded, never greeted...) is no success
    if code == 0 then code = 1 end
  end
  local reason = how == "signal" and "signal" or "duration"
  if o.json then
    io_.stdout:write(out.json{ time = timestamp(), event = "stopped", reason = reason, signal = sig,
      open = seen.open, exit = code }, "\n")
  else
    local why = how == "signal" and ("stopped by SIG" .. sig) or "stopped after --duration"
    io_.stdout:write(timestamp(), " ", why, " (channel ", seen.open and "open" or "not open", ", exit ",
      tostring(code), ")\n")
  end
  io_.stdout:flush()
  return code
end

return M
