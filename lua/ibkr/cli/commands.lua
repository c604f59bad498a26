-- The one-shot commands of ibkr-session. Each runs inside a coroutine on a cooperative session
-- (see ibkr/cli/drive.lua) and returns a report:
--   { code = exit code, doc = the JSON line's fields, line = the human line for stdout (or nil),
--     errline = the human line for stderr (or nil), hint = what to do (or nil) }
-- A 2xx answer is judged by its body (ibkr.state.judge): {"error": ...}, RESULT false, a logout
-- with status false, a status body with a `fail` text are failures, whatever the status line said.

local state = require("ibkr.state")
local core = require("ibkr.core")
local out = require("ibkr.cli.out")
local report = require("ibkr.cli.report")
local hints = require("ibkr.cli.hints")

local M = {}

local judge = state.judge -- the library's one table of what success means per endpoint

-- Report of a failed call.
function M.failed(name, err, ctx)
  local st = report.state_of_error(err)
  local code = report.code_of_state(st)
  local hint = hints.for_error(err, ctx)
  return {
    code = code, hint = hint,
    doc = { command = name, ok = false, exit = code, state = st, error = report.plain_error(err),
      hint = hint },
    errline = name .. ": " .. out.text(tostring(err), 2 * out.MAX_TEXT),
  }
end

-- Report of a 2xx answer whose body says the call failed.
local function refused(name, res, why, ctx)
  local st = why == "no session" and "no_session" or "error"
  local code = report.code_of_state(st)
  local hint = hints.for_state(st, ctx)
  local shown = type(res) == "table" and report.describe_status(res, true) or ""
  return {
    code = code, hint = hint,
    doc = { command = name, ok = false, exit = code, state = st, result = res, hint = hint,
      error = { kind = "answer", message = why } },
    errline = name .. " failed: " .. out.text(why) .. (shown ~= "" and (" (" .. shown .. ")") or ""),
  }
end

-- Report of a judged-good answer: line, exit code, extra JSON fields.
local function answered(name, res, line, code, extra, hint)
  local doc = { command = name, ok = code == 0, exit = code, result = res, hint = hint }
  for k, v in pairs(extra or {}) do doc[k] = v end
  return { code = code, doc = doc, line = line, hint = hint }
end

-- Calls endpoint `ep` with fn, judges the answer; on success calls good(res, o, ctx, s).
local function judged(name, ep, fn, good)
  return function(s, o, ctx)
    local res, err = fn(s, o)
    if res == nil then return M.failed(name, err, ctx) end
    local ok, why = judge(ep, res)
    if not ok then return refused(name, res, why or "failed", ctx) end
    return good(res, o, ctx, s)
  end
end

M.status = function(s, _, ctx)
  local st, detail = s:health()
  local code = report.code_of_state(st)
  local doc = { command = "status", state = st, ok = st == "ready", exit = code }
  local hint
  if core.is_error(detail) then
    doc.error = report.plain_error(detail)
    hint = hints.for_error(detail, ctx)
  else
    doc.result = detail
    hint = hints.for_state(st, ctx)
  end
  doc.hint = hint
  return { code = code, doc = doc, hint = hint, line = st .. " (" .. report.describe(detail) .. ")" }
end

M.tickle = judged("tickle", "tickle", function(s) return s:tickle() end, function(res, _, ctx)
  local as = state.tickle_status(res)
  local st = as and state.of_status(as)
  local line = "tickle ok"
  if st then line = line .. ": " .. st end
  if type(res.session) == "string" then line = line .. ", session " .. out.text(res.session, 64) end
  if math.type(res.ssoExpires) then
    line = line .. string.format(", sso expires in %.0f s", res.ssoExpires / 1000)
  end
  if as and st ~= "ready" then line = line .. " (" .. report.describe_status(as) .. ")" end
  local code = st and report.code_of_state(st) or 0
  return answered("tickle", res, line, code, { state = st }, st and hints.for_state(st, ctx))
end)

M.validate = judged("validate", "sso_validate", function(s) return s:sso_validate() end, function(res)
  local line = "validate ok"
  if res.USER_NAME ~= nil then line = line .. ": user " .. out.text(res.USER_NAME, 64) end
  if math.type(res.EXPIRES) then line = line .. string.format(", expires in %.0f s", res.EXPIRES / 1000) end
  return answered("validate", res, line, 0)
end)

-- init: ready -> 0; accepted but not yet authenticated -> 0 with "pending" (the gateway needs
-- ~0.5-15 s), and so is still competing after --compete (the takeover is under way);
-- competing without --compete (the other login kept the session), disconnected -> 1.
-- "ready" only when auth/status says so: ssodh/init's own "authenticated" is no proof (some
-- gateways drop the session again right after it); unconfirmed, it is "pending".
M.init = judged("init", "init_brokerage",
  function(s, o) return s:init_brokerage{ compete = o.compete == true } end,
  function(res, o, ctx, s)
    local st, shown = state.of_status(res), res
    if st == "ready" then
      local as = s:auth_status()
      local ok = as ~= nil and judge("auth_status", as)
      st = ok and state.of_status(as) or "unauthenticated"
      if ok then shown = as end
    end
    local desc = report.describe_status(shown)
    if st == "unauthenticated" or (st == "competing" and o.compete) then
      local what = st == "competing" and "takes the brokerage session over from the other login"
        or "opens the brokerage session"
      return answered("init", res, "init accepted, pending: the gateway " .. what .. " within "
        .. "~0.5-15 s; `ibkr-session wait` waits for it (" .. desc .. ")", 0, { state = st, pending = true })
    end
    local code = report.code_of_state(st)
    return answered("init", res, st .. " (" .. desc .. ")", code, { state = st }, hints.for_state(st, ctx))
  end)

M.reauthenticate = judged("reauthenticate", "reauthenticate", function(s) return s:reauthenticate() end,
  function(res)
    local msg = type(res.message) == "string" and res.message ~= "" and out.text(res.message) or "ok"
    return answered("reauthenticate", res, "reauthenticate: " .. msg .. " (asynchronous: the session is "
      .. "ready up to ~15 s later; `ibkr-session wait` waits for it)", 0, { pending = true })
  end)

M.logout = judged("logout", "logout", function(s) return s:logout() end, function(res)
  return answered("logout", res, "logged out", 0)
end)

-- wait: ready -> 0; otherwise the last state's code (its error's, when the gateway never answered).
M.wait = function(s, o, ctx)
  local res, err = s:wait_ready{ timeout = o.timeout or ctx.wait_timeout, init = o.init == true,
    compete = o.compete == true }
  if res ~= nil then
    return answered("wait", res, "ready (" .. report.describe_status(res) .. ")", 0, { state = "ready" })
  end
  local cause = err.cause
  local st = err.state or report.state_of_error(err)
  if st == "down" and cause then return M.failed("wait", cause, ctx) end
  local code = report.code_of_state(st)
  local hint = hints.for_error(err, ctx) -- from what was seen: the last state, the repairs tried
  return {
    code = code, hint = hint,
    doc = { command = "wait", ok = false, exit = code, state = st, error = report.plain_error(err),
      hint = hint },
    errline = "wait: " .. out.text(tostring(err.message or err)),
  }
end

-- A request the library refuses to send (a raised argument error: a path with a space or a
-- control byte...) is a usage error.
local function refused_usage(name, e)
  local msg = tostring(e):gsub("^[^\n]-:%d+: ", "")
  msg = msg:match("^bad argument #%d+ to '[^']*' %((.*)%)$") or msg
  return { code = 64, errline = name .. ": " .. out.text(msg),
    doc = { command = name, ok = false, exit = 64, error = { kind = "usage", message = msg } } }
end

M.request = function(s, o, ctx)
  local method, path = o.args[1]:upper(), o.args[2]
  local ok, res, got = pcall(s.request, s, method, path, o.data and { body = o.data } or nil)
  if not ok then return refused_usage("request", res) end
  if res == nil then return M.failed("request", got, ctx) end -- got: the error, else the meta
  local r = answered("request", res, out.json(res, true), 0,
    { status = got.status, method = method, path = path })
  r.whole = { result = true } -- the answer asked for, entire in --json too
  return r
end

return M
