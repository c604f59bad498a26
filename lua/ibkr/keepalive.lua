-- The keep-alive: tickles a session, follows its state, repairs what can be repaired.
--
-- One loop, two ways to run it:
--   coroutine(s, opts): a coroutine that yields the seconds until it wants its next resume, both
--     between tickles and while a request is in flight (then a few milliseconds), so one resume
--     never blocks the host (the exchange runs step by step on the C core's non-blocking request).
--   loop(s, opts): the same loop run inline, waiting with opts.sleep (cqueues.sleep, copas.pause,
--     ngx.sleep...), or blocking with the session's sleep when no sleep is given.
-- It never raises and never ends because of network, HTTP or JSON errors. It ends after s:stop(),
-- s:close(), or coroutine.close(co) (which frees an in-flight request: see ibkr/call.lua).

local core = require("ibkr.core")
local check = require("ibkr.check")
local state = require("ibkr.state")
local waiter = require("ibkr.waiter")

local M = {}

local repair = require("ibkr.repair")
local callback = require("ibkr.callback")

M.MIN_VALIDATE_INTERVAL = 60 -- the gateway allows one /sso/validate per minute
M.LOOP_SLICE = 1             -- keepalive_loop notices stop()/close() within this many seconds

-- push: true, or the channel's options as s:stream takes them (checked by ibkr/stream.lua, whose
-- errors point at the caller's line too)
local function push_option(v)
  if type(v) == "table" then return require("ibkr.stream").check(v, "s:keepalive: option 'push'") end
  if type(v) ~= "boolean" then return "a boolean or a table of s:stream's options" end
end

local OPTS = {
  interval = "number>0", retry_interval = "number>0", init = "boolean", compete = "boolean",
  validate_interval = "number>0", on_state = "function", on_error = "function",
  on_repair = "function", push = push_option,
}
local LOOP_OPTS = { sleep = "function" } -- keepalive_loop takes these too
for k, v in pairs(OPTS) do LOOP_OPTS[k] = v end

-- The options of s:keepalive (s:keepalive_loop when `loop`), checked, with defaults applied.
-- An error points at the caller's line (ibkr/check.lua).
local function options(opts, loop)
  opts = check.options(loop and LOOP_OPTS or OPTS, opts, loop and "s:keepalive_loop" or "s:keepalive", 3)
  local o = {
    interval = opts.interval or 60,
    retry_interval = opts.retry_interval or 5,
    init = opts.init ~= false,
    compete = opts.compete == true,
    validate_interval = opts.validate_interval,
    on_state = opts.on_state, on_error = opts.on_error, on_repair = opts.on_repair,
    sleep = opts.sleep, push = opts.push or nil,
  }
  if o.validate_interval and o.validate_interval < M.MIN_VALIDATE_INTERVAL then
    o.validate_interval = M.MIN_VALIDATE_INTERVAL
  end
  return o
end

-- Callbacks: on_state(new, old, detail, why), on_error(err), on_repair(action, status, err).
-- What one raises goes to on_error (ibkr/callback.lua). Never raises.
local function reporter(s, o)
  local r = { current = nil }
  function r.error(err)
    if o.on_error then pcall(o.on_error, err) end
  end
  function r.callback(name, ...)
    local f = o[name]
    if f then callback.call(f, name, r.error, ...) end
  end
  -- `why`: what the gateway said (status fail/message, error message), one line, or nil.
  -- A recovery to "ready" (confirmed over REST) is announced on the session's push channels:
  -- IBKR pushes a drop of authentication, never its recovery.
  function r.state(new, detail)
    s:observe(new, detail)
    if new ~= r.current then
      local old = r.current
      r.current = new
      local why = core.is_error(detail) and detail.message or state.said(detail)
      r.callback("on_state", new, old, detail, why)
      if new == "ready" and old ~= nil then
        s:push_announce{ topic = "ibkr", event = "authenticated", state = new, previous = old,
          detail = detail }
      end
    end
  end
  return r
end

-- The state after one tickle (within `deadline`, the session's clock, when given): (state,
-- detail), or nil when the answer says nothing new (held back). A tickle answer that carries no
-- status, or that judge() refuses without saying "no session", is followed by
-- /iserver/auth/status.
local function observe(s, w, rep, alive, deadline)
  local res, err = s:endpoint(w, "tickle", nil, deadline)
  if not alive() then return end
  if res ~= nil then
    local st, why = state.of_answer("tickle", res)
    if why then rep.error(state.refusal("POST", "/tickle", res, why)) end
    if st and st ~= "error" then return st, state.tickle_status(res) or res end
    res, err = s:endpoint(w, "auth_status", nil, deadline)
    if not alive() then return end
    if res ~= nil then
      st, why = state.of_answer("auth_status", res)
      if not why then return st, res end
      err = state.refusal("POST", "/iserver/auth/status", res, why)
      rep.error(err)
      return st, err
    end
  end
  rep.error(err)
  if state.says_wait(err) then return nil, err end
  return state.of_error(err), err
end

-- GET /sso/validate when due; a refused answer (RESULT false...) is reported, the state kept
-- (RESULT false comes and goes while the session stays authenticated: ibeam #164).
local function validate(s, w, o, rep)
  local r, e = s:endpoint(w, "sso_validate")
  local nxt = s:now() + o.validate_interval
  if r == nil then
    rep.error(e)
    if e.kind == "rate_limited" and e.retry_after then nxt = s:now() + e.retry_after end
  else
    local ok, why = state.judge("sso_validate", r)
    if not ok then rep.error(state.refusal("GET", "/sso/validate", r, why)) end
  end
  return nxt
end

-- Repair when wanted and due (ibkr/repair.lua: escalation, backoff). Returns the new state.
local function maybe_repair(s, w, o, rep, sched, st, alive)
  if not (o.init and repair.wanted(st, o.compete) and sched:due(s:now())) or s:held() then return st end
  local ready = repair.run(s, w, { compete = o.compete, alive = alive,
    on_repair = function(action, r, e)
      if e then rep.error(e) end
      rep.callback("on_repair", action, r, e)
    end })
  if not alive() then return st end
  if ready then
    sched:repaired(s:now())
    rep.state("ready", ready)
    return "ready"
  end
  sched:failed(s:now())
  local seen, detail = s:state() -- what the repair's last poll saw
  if seen and seen ~= rep.current then rep.state(seen, detail) end
  return rep.current or st
end

-- Sleeps `pause` seconds, or until the session's hold ends (the gateway's Retry-After, a 429
-- without one, refused OAuth tokens) or its backoff after 5xx answers, when that is later.
-- A push channel's news (ibkr/push.lua: w.interrupted) ends the pause at once.
local function pause_for(s, w, pause, alive)
  local held, backoff = s:held(), s:backoff()
  if held and held > pause then pause = held end
  if backoff and backoff > pause then pause = backoff end
  local cut = w.interrupted or function() return false end
  if w.chunk then
    -- Inline loop: the host's sleep cannot be interrupted, so sleep in slices and look at
    -- stop()/close() between them (a coroutine just is not resumed again, or closed).
    local wake = s:now() + pause
    while alive() and not cut() do
      local left = wake - s:now()
      if left <= 0 then break end
      w.wait(left < w.chunk and left or w.chunk, nil, true)
    end
  else
    w.wait(pause, nil, true) -- (only this wait is cut by the channel's news: ibkr/push.lua)
  end
  if w.clear then w.clear() end
end

-- The loop body. `w` is the waiter (ibkr/call.lua); `alive()` is false once it must end.
-- `px`: the push channel (ibkr/push.lua), or nil.
local function run(s, o, w, alive, px)
  local rep = reporter(s, o)
  local sched = repair.new(o.retry_interval)
  local next_validate = o.validate_interval and s:now() + o.validate_interval
  while alive() do
    local st, detail = observe(s, w, rep, alive, px and px:probe_deadline())
    if not alive() then return end
    local got_through = st ~= nil -- false: held back (429, Retry-After): retry sooner, state kept
    if st or not rep.current then rep.state(st or "error", detail) end
    if px then px:start(rep) end -- the channel starts after the first observation (its session id)
    st = rep.current
    -- a repair counts once it sticks: a fall back seen before that is a failed repair
    if st == "ready" then
      sched:seen(true, s:now())
    elseif got_through and repair.wanted(st, o.compete) then
      sched:seen(false, s:now())
    end
    -- Repair. Unauthenticated (and not-yet-connected) sessions are re-initialised when `init`;
    -- a competing session only with `compete = true`, because taking the brokerage session
    -- disconnects the user's other login (TWS, the mobile app): by default we report it and wait.
    st = maybe_repair(s, w, o, rep, sched, st, alive)
    if not alive() then return end
    if next_validate and s:now() >= next_validate and st ~= "down" and st ~= "tls" and not s:held() then
      next_validate = validate(s, w, o, rep)
      if not alive() then return end
    end
    pause_for(s, w, (st == "ready" and got_through) and o.interval or o.retry_interval, alive)
  end
end

local function stopped_error(method, path)
  return core.error{ kind = "closed", message = "keep-alive stopped", method = method, path = path }
end

local function liveness(s)
  return s:liveness() -- taken now: a stop() before the first resume ends this keep-alive too
end

-- With push, the loop runs with the channel's waiter; the channel ends with the loop however it
-- ends (stop, close, coroutine.close: a to-be-closed variable).
local function run_with(s, o, w, alive, mode)
  if not o.push then return run(s, o, w, alive) end
  local px <close> = require("ibkr.push").new(s, w, mode, type(o.push) == "table" and o.push or nil)
  run(s, o, px.w, alive, px)
end

function M.coroutine(s, opts)
  local o = options(opts, false)
  local alive = liveness(s)
  local w = waiter.new("yield", alive, stopped_error)
  return coroutine.create(function() run_with(s, o, w, alive, "yield") end)
end

function M.loop(s, opts)
  local o = options(opts, true)
  local alive = liveness(s)
  local w
  if o.sleep then
    w = waiter.new("host", alive, stopped_error, o.sleep, M.LOOP_SLICE)
  else
    w = waiter.new("block", alive, stopped_error, function(secs) s:sleep(secs) end, M.LOOP_SLICE)
  end
  run_with(s, o, w, alive, o.sleep and "host" or "block")
end

return M
