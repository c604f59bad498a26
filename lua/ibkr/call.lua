-- One call of a session: pacing, the HTTP exchange (blocking or step by step), retries, stats.
--
-- How a call waits is decided by a "waiter" (ibkr/waiter.lua).
-- The C core does every exchange; this file never parses HTTP or JSON.

local core = require("ibkr.core")
local retry = require("ibkr.retry")

local M = {}

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

-- Performs `method path` for session `s` with waiter `w`.
-- allow_retry: whether retryable failures are tried again (s.retries times at most).
-- Returns result, nil, status on success, or nil, err.
function M.run(s, w, method, path, copts, allow_retry)
  if s._closed then return nil, closed_error(method, path) end
  local attempt = 0
  local last_err
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
    if w.step then
      res, err, status, aborted = stepped(s, w, method, path, copts)
      if aborted then return nil, err end -- closed or stopped mid-request: not an exchange
    else
      res, err, status = s._core:perform(method, path, copts)
    end
    count(s, res, err, status)
    if res ~= nil then return res, nil, status end
    if s._closed then return nil, err end
    attempt = attempt + 1
    local delay = allow_retry and attempt <= s._retries and retry.retryable(err)
      and retry.delay(attempt, err.retry_after, s._random)
    if not delay then return nil, err end
    s._stats.retries = s._stats.retries + 1
    last_err = err
    w.wait(delay)
    if not w.live() then return nil, w.gone(method, path) end
  end
end

return M
