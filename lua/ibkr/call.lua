-- One call of a session: pacing, the HTTP exchange (blocking or step by step), retries, stats.
--
-- How a call waits is decided by a "waiter" (a table):
--   wait(seconds)  how to pass time: core.sleep / the session's sleep (blocking), coroutine.yield
--                  (cooperative, the keep-alive), or a host's sleep (cqueues.sleep, copas.pause...)
--   step           true: run the exchange with core start/step and wait() between steps;
--                  false: core perform (blocking)
--   live()         false once the work must stop (session closed, keep-alive stopped); then the
--                  call returns its `gone()` error at its next wake-up
-- The C core does every exchange; this file never parses HTTP or JSON.

local core = require("ibkr.core")
local retry = require("ibkr.retry")

local M = {}

local BUSY_POLL = 0.01 -- seconds between tries while another coroutine's request is in flight

local function closed_error(method, path)
  return core.error{ kind = "closed", message = "session is closed", method = method, path = path }
end
M.closed_error = closed_error

-- Runs one exchange with start/step, waiting with w.wait between steps. A 4th result `true`
-- says the work was abandoned (w.live() turned false) before the exchange finished.
-- The request is held in a to-be-closed variable: that is what frees it when the coroutine is
-- closed while suspended here (coroutine.close runs pending to-be-closed variables), when the
-- keep-alive is stopped, or when a host's sleep raises. Without it an abandoned coroutine would
-- keep the session "busy" until the garbage collector ran, so every later call would fail.
local function stepped(s, w, method, path, copts)
  local cs = s._core
  local req, err = cs:start(method, path, copts)
  if not req and err.kind == "busy" then
    -- Another coroutine of this session has a request in flight: wait our turn.
    local give_up = s._clock() + s._timeout
    while not req and err.kind == "busy" and s._clock() < give_up do
      w.wait(BUSY_POLL)
      if not w.live() then return nil, w.gone(method, path), nil, true end
      req, err = cs:start(method, path, copts)
    end
  end
  if not req then return nil, err end
  local inflight <close> = req -- luacheck: ignore inflight
  while true do
    local done, secs = req:step()
    if done then return req:result() end
    w.wait(secs or BUSY_POLL)
    if not w.live() then return nil, w.gone(method, path), nil, true end
  end
end

local function count(s, res, err, status)
  local st = s._stats
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

-- [oauth] OAuth sessions (ibkr/oauth.lua): obtain or renew the live session token, then sign this
-- attempt afresh (new nonce and timestamp). Returns the attempt's copts, or nil, err.
-- One handshake at a time per session: other callers wait for it (bounded by the timeout).
local function oauth_copts(s, w, method, path, copts)
  local o = s._oauth
  while o.fetching and s._clock() < o.fetching do
    w.wait(BUSY_POLL)
    if not w.live() then return nil, w.gone(method, path) end
  end
  if o:needs_token(s._clock()) then
    local busy <close> = o:fetching_until(s._clock() + s._timeout) -- luacheck: ignore busy
    local res, err = M.run(s, w, "POST", o.LST_PATH, o:token_request(), false, true)
    local ok
    if res then ok, err = o:accept_token(res, s._clock()) end
    if not ok then return nil, o:token_error(err) end
  end
  return o:sign(method, path, copts)
end

-- Performs `method path` for session `s` with waiter `w`.
-- allow_retry: whether retryable failures are tried again (s.retries times at most).
-- Returns result, nil, status on success, or nil, err.
-- raw: [oauth] no OAuth signing (the token request itself).
function M.run(s, w, method, path, copts, allow_retry, raw)
  if s._closed then return nil, closed_error(method, path) end
  local attempt = 0
  local last_err
  local renewed -- [oauth] the token was renewed once after a 401
  while true do
    if s._pacer then
      local wait, again = s._pacer:reserve(path, s._clock())
      if not wait then
        if last_err then return nil, last_err end -- a retry that pacing forbids: keep the real error
        s._stats.rate_limited = s._stats.rate_limited + 1
        local err = core.error{
          kind = "rate_limited", method = method, path = path, retry_after = again,
          message = string.format("%s %s would exceed the gateway's pacing limits; retry in %.3g s",
            method, path, again),
        }
        s._stats.last_error = err
        return nil, err
      end
      if wait > 0 then
        s._stats.paced = s._stats.paced + 1
        w.wait(wait)
        if not w.live() then return nil, w.gone(method, path) end
      end
    end
    local res, err, status, aborted
    local acopts = copts
    if s._oauth and not raw then -- [oauth]
      acopts, err = oauth_copts(s, w, method, path, copts)
      if not acopts then return nil, err end
    end
    if w.step then
      res, err, status, aborted = stepped(s, w, method, path, acopts)
      if aborted then return nil, err end -- closed or stopped mid-request: not an exchange
    else
      res, err, status = s._core:perform(method, path, acopts)
    end
    count(s, res, err, status)
    if res ~= nil then return res, nil, status end
    if s._closed then return nil, err end
    if s._oauth and not raw and not renewed and s._oauth:refused(err) then -- [oauth] new token, once
      renewed = true
      goto again
    end
    attempt = attempt + 1
    local delay = allow_retry and attempt <= s._retries and retry.retryable(err)
      and retry.delay(attempt, err.retry_after, s._random)
    if not delay then return nil, err end
    s._stats.retries = s._stats.retries + 1
    last_err = err
    w.wait(delay)
    if not w.live() then return nil, w.gone(method, path) end
    ::again::
  end
end

return M
