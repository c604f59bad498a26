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
local state = require("ibkr.state")
local waiter = require("ibkr.waiter")

local M = {}

M.MIN_VALIDATE_INTERVAL = 60 -- the gateway allows one /sso/validate per minute
M.LOOP_SLICE = 1             -- keepalive_loop notices stop()/close() within this many seconds

local OPTS = {
  interval = "number", retry_interval = "number", init = "boolean", compete = "boolean",
  validate_interval = "number", on_state = "function", on_error = "function",
  on_repair = "function", sleep = "function",
}

local function check(opts, with_sleep, level)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("keepalive: options must be a table", level + 1) end
  for k, v in pairs(opts) do
    local want = OPTS[k]
    if not want or (k == "sleep" and not with_sleep) then
      error("keepalive: unknown option '" .. tostring(k) .. "'", level + 1)
    end
    if type(v) ~= want then error("keepalive: '" .. k .. "' must be a " .. want, level + 1) end
  end
  local o = {
    interval = opts.interval or 60,
    retry_interval = opts.retry_interval or 5,
    init = opts.init ~= false,
    compete = opts.compete == true,
    validate_interval = opts.validate_interval,
    on_state = opts.on_state, on_error = opts.on_error, on_repair = opts.on_repair,
    sleep = opts.sleep,
  }
  for _, k in ipairs{ "interval", "retry_interval", "validate_interval" } do
    local v = o[k]
    if v ~= nil and (v ~= v or v <= 0) then error("keepalive: '" .. k .. "' must be > 0", level + 1) end
  end
  if o.validate_interval and o.validate_interval < M.MIN_VALIDATE_INTERVAL then
    o.validate_interval = M.MIN_VALIDATE_INTERVAL
  end
  return o
end

-- The loop body. `w` is the waiter (ibkr/call.lua); `alive()` is false once it must end.
local function run(s, o, w, alive)
  local clock = s._clock
  local current -- last reported state

  local function report(err)
    if o.on_error then pcall(o.on_error, err) end -- an error in on_error has nowhere to go
  end
  local function callback(name, ...)
    local f = o[name]
    if not f then return end
    local ok, e = pcall(f, ...)
    if not ok then
      report(core.error{ kind = "callback", callback = name, cause = e,
        message = "error in " .. name .. ": " .. tostring(e) })
    end
  end
  local function set_state(new, detail)
    if new ~= current then
      local old = current
      current = new
      callback("on_state", new, old, detail)
    end
  end

  local next_validate = o.validate_interval and clock() + o.validate_interval
  while alive() do
    local res, err = s:_ep(w, "tickle")
    if not alive() then return end
    local st, detail
    if res ~= nil then
      local as = state.tickle_status(res)
      if as then
        st, detail = state.of_status(as), as
      elseif type(res) == "table" and res.error == "no session" then
        st, detail = "no_session", res
      else -- a 2xx tickle without authStatus: ask /iserver/auth/status
        res, err = s:_ep(w, "auth_status")
        if not alive() then return end
        if res ~= nil then
          st, detail = state.of_status(res), res
        else
          report(err)
          st, detail = state.of_error(err), err
        end
      end
    else
      report(err)
      st, detail = state.of_error(err), err
    end
    set_state(st, detail)

    -- Repair. Unauthenticated (and not-yet-connected) sessions are re-initialised when `init`;
    -- a competing session only with `compete = true`, because taking the brokerage session
    -- disconnects the user's other login (TWS, the mobile app): by default we report it and wait.
    if o.init and (st == "unauthenticated" or st == "disconnected" or (st == "competing" and o.compete)) then
      local r, e, action = s:_repair(w, o.compete)
      if not alive() then return end
      if r == nil then report(e) end
      callback("on_repair", action, r, e)
      if r ~= nil and action == "init_brokerage" and (r.authenticated ~= nil or r.connected ~= nil) then
        st = state.of_status(r)
        set_state(st, r)
      end
    end

    if next_validate and clock() >= next_validate and st ~= "down" then
      local r, e = s:_ep(w, "sso_validate")
      if not alive() then return end
      next_validate = clock() + o.validate_interval
      if r == nil then
        report(e)
        if e.kind == "rate_limited" and e.retry_after then next_validate = clock() + e.retry_after end
      end
    end

    local pause = st == "ready" and o.interval or o.retry_interval
    if w.chunk then
      -- Inline loop: the host's sleep cannot be interrupted, so sleep in slices and look at
      -- stop()/close() between them (a coroutine just is not resumed again, or closed).
      local wake = clock() + pause
      while alive() do
        local left = wake - clock()
        if left <= 0 then break end
        w.wait(left < w.chunk and left or w.chunk)
      end
    else
      w.wait(pause)
    end
  end
end

local function stopped_error(method, path)
  return core.error{ kind = "closed", message = "keep-alive stopped", method = method, path = path }
end

local function liveness(s)
  local gen = s._generation -- taken now: a stop() before the first resume ends this keep-alive too
  return function() return not s._closed and s._generation == gen end
end

function M.coroutine(s, opts)
  local o = check(opts, false, 3)
  local alive = liveness(s)
  local w = waiter.new("yield", alive, stopped_error)
  return coroutine.create(function() run(s, o, w, alive) end)
end

function M.loop(s, opts)
  local o = check(opts, true, 3)
  local alive = liveness(s)
  local w
  if o.sleep then
    w = waiter.new("host", alive, stopped_error, o.sleep, M.LOOP_SLICE)
  else
    w = waiter.new("block", alive, stopped_error, function(secs) s._sleep(secs) end, M.LOOP_SLICE)
  end
  run(s, o, w, alive)
end

return M
