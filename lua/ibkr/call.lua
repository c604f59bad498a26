-- One call of a session: pacing, the HTTP exchange (blocking or step by step), retries, the
-- call's deadline, stats.
--
-- How a call waits is decided by a "waiter" (ibkr/waiter.lua).
-- The C core does every exchange; this file never parses HTTP or JSON.

local core = require("ibkr.core")
local retry = require("ibkr.retry")
local stats = require("ibkr.stats")

local M = {}

local BUSY_POLL = 0.01 -- [oauth] seconds between looks while another caller fetches the token

local function closed_error(method, path)
  return core.error{ kind = "closed", message = "session is closed", method = method, path = path }
end
M.closed_error = closed_error

-- Runs one exchange with start/step, waiting with w.wait(seconds, request) between steps: the
-- request is a pollable whose descriptor becomes readable when the answer is there. A 4th result
-- `true` says the work was abandoned (w.live() turned false) before the exchange finished.
-- Requests of one session run side by side (the core never says "busy" to start()).
-- The request is held in a to-be-closed variable: that is what frees it when the coroutine is
-- closed while suspended here (coroutine.close runs pending to-be-closed variables), when the
-- keep-alive is stopped, or when a host's sleep raises.
local function stepped(s, w, method, path, copts)
  local req, err = s._core:start(method, path, copts)
  if not req then return nil, err end
  local inflight <close> = req -- luacheck: ignore inflight
  while true do
    local done, secs = req:step()
    if done then return req:result() end
    w.wait(secs, req)
    if not w.live() then return nil, w.gone(method, path), nil, true end
  end
end

local function count(s, res, err, status, path)
  local st = s._stats
  stats.exchange(st, s._clock(), path, res, err) -- per endpoint and outcome, last success
  st.requests = st.requests + 1
  if res then
    st.last_status = status or st.last_status
  else
    st.failures = st.failures + 1
    st.last_error = err
    if err.status then st.last_status = err.status end
    if err.status == 429 then st.rate_limited = st.rate_limited + 1 end
  end
end

-- A call refused without sending: kind "rate_limited" with retry_after (seconds).
local function refused(s, method, path, again, held)
  s._stats.rate_limited = s._stats.rate_limited + 1
  local err = core.error{
    kind = "rate_limited", method = method, path = path, retry_after = again,
    message = held
      and string.format("%s %s held back: the gateway asked to wait (Retry-After); retry in %.3g s",
        method, path, again)
      or string.format("%s %s would exceed the gateway's pacing limits; retry in %.3g s",
        method, path, again),
  }
  s._stats.last_error = err
  return err
end

-- The call's deadline passed before an attempt could be made.
local function late(method, path, budget)
  return core.error{ kind = "timeout", method = method, path = path,
    message = string.format("no time left of the call's %g s deadline", budget) }
end

-- Pacing before an attempt: waits when the pacer says so and the wait fits before `limit`.
-- Returns true, or nil plus the error to return (a retry keeps its real error `last_err`).
local function admit(s, w, method, path, last_err, limit)
  local now = s._clock()
  local wait, again, held = s._pacer:reserve(path, now)
  if wait and wait > 0 and now + wait >= limit then wait, again = nil, wait end
  if not wait then
    if last_err then return nil, last_err end
    return nil, refused(s, method, path, again, held)
  end
  if wait > 0 then
    s._stats.paced = s._stats.paced + 1
    w.wait(wait)
    if not w.live() then return nil, w.gone(method, path) end
  end
  return true
end

-- The gateway's Retry-After on 429/503 holds back every call of the session (ibkr/pacing.lua).
local function note_hold(s, err)
  local ra = err.retry_after
  if (err.status == 429 or err.status == 503) and type(ra) == "number" and ra > 0 then
    s._pacer:hold(s._clock() + ra)
  end
end

-- The options of one exchange: the caller's, plus the time it may take (the session's timeout,
-- or what is left of the call's deadline when that is less). repeatable: sending it twice is
-- harmless (a retryable call), so the core may send it on a kept-alive connection.
local function exchange_opts(copts, secs, repeatable)
  local x = { timeout = secs, repeatable = repeatable or nil }
  if copts then x.query, x.body, x.headers = copts.query, copts.body, copts.headers end
  return x
end

-- A waiter for an attempt that must end within `secs` real seconds (the part of the call's
-- deadline that is left): the exchange runs step by step and is abandoned as a "timeout" when
-- the time is up, whatever the core's own per-exchange timeout does. Real time, because the
-- exchange's time is real even when the session runs on an injected clock; for the same reason
-- a blocking call waits for the steps with the real core.sleep, as perform would block.
local function bounded(w, secs)
  local stop = core.monotonic() + secs
  local sleep = w.step and w.wait or core.sleep
  return {
    wait = function(t, pollable) sleep(t or 0.001, pollable) end, step = true,
    live = function() return w.live() and core.monotonic() < stop end,
    gone = function(method, path)
      if not w.live() then return w.gone(method, path) end
      return core.error{ kind = "timeout", method = method, path = path,
        message = "the call's deadline passed during the exchange" }
    end,
  }
end

-- [oauth] OAuth sessions (ibkr/oauth.lua): obtain or renew the live session token, then sign this
-- attempt afresh (new nonce and timestamp). Returns the attempt's copts, or nil, err.
-- One handshake at a time per session: other callers wait for it, each within its own deadline
-- `limit`. The token request is a call of its own (unsigned: `raw`) bounded by the same deadline,
-- so its exchange gets the session's timeout or what is left of the deadline, whichever is less.
local function oauth_copts(s, w, method, path, copts, limit)
  local o = s._oauth
  while o.fetching and s._clock() < o.fetching do
    if s._clock() >= limit then return nil, late(method, path, s._deadline) end
    w.wait(BUSY_POLL)
    if not w.live() then return nil, w.gone(method, path) end
  end
  if o:needs_token(s._clock()) then
    local busy <close> = o:fetching_until(limit) -- luacheck: ignore busy
    local res, err = M.run(s, w, "POST", o.LST_PATH, o:token_request(), false, limit, true)
    local ok
    if res then ok, err = o:accept_token(res, s._clock()) end
    if not ok then return nil, o:token_error(err) end
  end
  return o:sign(method, path, copts)
end

-- One attempt of `method path` within the call's deadline `limit` (signed first on an OAuth
-- session unless `raw`). Returns res, nil, status; or nil, err; or nil, err, nil, true when the
-- call must end with err now (closed or stopped mid-request, out of time). A failed token
-- request is the attempt's error: the caller's retry rules apply to it as to any other.
local function attempt_once(s, w, method, path, copts, limit, last_err, raw, repeatable)
  if s._oauth and not raw then -- [oauth]
    local err
    copts, err = oauth_copts(s, w, method, path, copts, limit)
    if not copts then return nil, err end
  end
  local left = limit - s._clock()
  if left <= 0 then return nil, last_err or late(method, path, s._deadline), nil, true end
  local cut = left < s._timeout
  local xopts = exchange_opts(copts, cut and left or s._timeout, repeatable)
  local res, err, status, aborted
  local xw = cut and bounded(w, left) or w
  if xw.step then
    res, err, status, aborted = stepped(s, xw, method, path, xopts)
    if aborted and err.kind ~= "timeout" then return nil, err, nil, true end -- closed or stopped
    if aborted then return nil, last_err or err, nil, true end -- out of time: what the gateway said before
  else
    res, err, status = s._core:perform(method, path, xopts)
  end
  if s._closed then return nil, closed_error(method, path), nil, true end
  count(s, res, err, status, path)
  if res ~= nil then return res, nil, status end
  note_hold(s, err)
  if cut and err.kind == "timeout" and last_err then return nil, last_err, nil, true end
  return nil, err
end

-- Performs `method path` for session `s` with waiter `w`.
-- allow_retry: whether retryable failures are tried again (s.retries times at most).
-- deadline: optional absolute time (the session's clock) by which the call must end; the call's
-- own bound is s._deadline seconds from now: all attempts, backoff and pacing waits included.
-- When the deadline cuts an attempt short, the previous attempt's answer is returned (what the
-- gateway said is worth more than "timeout").
-- raw: [oauth] true for the token request itself (not signed, no renewal).
-- Returns result, nil, status on success, or nil, err.
function M.run(s, w, method, path, copts, allow_retry, deadline, raw)
  if s._closed then return nil, closed_error(method, path) end
  local limit = s._clock() + s._deadline
  if deadline and deadline < limit then limit = deadline end
  local attempt = 0
  local last_err
  local renewed -- [oauth] the token was renewed once after a 401
  while true do
    local ok, perr = admit(s, w, method, path, last_err, limit)
    if not ok then return nil, perr end
    local res, err, status, final = attempt_once(s, w, method, path, copts, limit, last_err, raw, allow_retry)
    if res ~= nil then return res, nil, status end
    if final then return nil, err end
    if s._oauth and not raw and not renewed and s._oauth:refused(err) then -- [oauth] new token, once
      renewed = true
      last_err = err
    else
      attempt = attempt + 1
      local delay = allow_retry and attempt <= s._retries and retry.retryable(err)
        and retry.delay(attempt, err.retry_after, s._random)
      if not delay or s._clock() + delay >= limit then return nil, err end
      s._stats.retries = s._stats.retries + 1
      last_err = err
      w.wait(delay)
      if not w.live() then return nil, w.gone(method, path) end
    end
  end
end

return M
