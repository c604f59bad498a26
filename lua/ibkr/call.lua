-- One call of a session: pacing, the HTTP exchange (blocking or step by step), retries, the
-- call's deadline, its meta, its trace events, stats.
--
-- The session (ibkr/init.lua) owns one caller, made by call.new; the caller owns what calls
-- share — the core session, the pacer, the counters, the OAuth signer in use, the tracer — and
-- nothing else touches them: the session asks through the methods below.
--   call.new{ core =, clock =, timeout =, deadline =, extra =, retries =, pacer =, oauth =,
--             random =, hint =, tracer = }
--   c:bounds(timeout, deadline, cap) -> limit, timeout: a call's absolute deadline and the
--                                       seconds of each of its exchanges
--   c:run(w, method, path, copts, allow_retry, limit, timeout) -> res, meta | nil, err (err.hint)
--   c:hinted(err) -> err, with its hint (and for a signed session redacted: ibkr/redact.lua)
--   c:stats() -> a new table of counters      c:held(now) -> seconds of a hold left, or nil
--   c:backoff(now) -> seconds the streak of 5xx calls asks pollers to wait still, or nil
--   c:websocket(path, sid, max_message) -> the push channel's core websocket, or nil, err
--   c:close()                                 closes the core session and the signer
-- How a call waits is decided by a "waiter" (ibkr/waiter.lua).
-- The C core does every exchange; this file never parses HTTP or JSON.

local core = require("ibkr.core")
local check = require("ibkr.check")
local kinds = require("ibkr.kinds")
local meta = require("ibkr.meta")
local retry = require("ibkr.retry")
local pacing = require("ibkr.pacing")
local PACED = pacing.PATH_INTERVAL -- the paths with a limit of their own (pacer:answered)
local redact = require("ibkr.redact")
local stats = require("ibkr.stats")

local M = {}

local Caller = {}
Caller.__index = Caller

local BUSY_POLL = 0.01 -- [signer] seconds between looks while another caller renews the token

local function closed_error(method, path)
  return core.error{ kind = "closed", message = "session is closed", method = method, path = path }
end
M.closed_error = closed_error

-- Runs one exchange with start/step, waiting with w.wait(seconds, request) between steps: the
-- request is a pollable whose descriptor becomes readable when the answer is there. Returns
-- aborted, then what the core's s:perform returns; aborted is true when the work was abandoned
-- (w.live() turned false) before the exchange finished.
-- Requests of one session run side by side (the core never says "busy" to start()).
-- The request is held in a to-be-closed variable: that is what frees it when the coroutine is
-- closed while suspended here (coroutine.close runs pending to-be-closed variables), when the
-- keep-alive is stopped, or when a host's sleep raises.
local function stepped(cs, w, method, path, copts)
  local req, err = cs:start(method, path, copts)
  if not req then return false, nil, err end
  local inflight <close> = req -- luacheck: ignore inflight
  while true do
    local done, secs = req:step()
    if done then return false, req:result() end
    w.wait(secs, req)
    if not w.live() then return true, nil, w.gone(method, path) end
  end
end

-- A gateway that keeps refusing (ibkr/kinds.lua, "Refusals"): the n-th refusal of a class in a
-- row sets a hold of kinds.backoff(class, n); any other answer ends the streak. A 429 without
-- Retry-After holds back every call (the pacer's hold, "pacing"); the error says for how long
-- (err.hold). The streak of failed calls ("server") is noted by the call (note_call).
-- A successful answer ends it in count(); this is the failure's half.
local function note_refusal(s, err)
  local class = kinds.refusal(err)
  if class == "pacing" then
    local n = (s.streak.pacing or 0) + 1
    s.streak.pacing = n
    local secs = kinds.backoff("pacing", n, s.random)
    s.pacer:hold(s.clock() + secs, "pacing")
    err.hold, err.refusals = secs, n
  elseif err.status then
    s.streak.pacing = nil
  end
end

-- The counters of an attempt's outcome, and the refusal streak (note_refusal).
local function count(s, res, err, status, path)
  local st = s.counts
  st.requests = st.requests + 1
  stats.exchange(st, s.clock(), path, res, err) -- per endpoint and outcome, last success
  if res then
    st.last_status = status or st.last_status
    s.streak.pacing = nil -- an answer ends a streak of refusals
    return
  end
  st.failures = st.failures + 1
  st.last_error = err
  if err.status then st.last_status = err.status end
  if err.status == 429 then st.rate_limited = st.rate_limited + 1 end
  note_refusal(s, err)
end

-- A call refused without sending: kind "rate_limited" with retry_after (seconds). `why`: what
-- holds it back (the pacer's reason), nil for the client's own limits.
local HELD = {
  retry_after = "the gateway asked to wait (Retry-After)",
  pacing = "the gateway refused with 429 and no Retry-After; IBKR's penalty box grows with every request",
}
local function refused(s, method, path, again, why)
  s.counts.rate_limited = s.counts.rate_limited + 1
  local err = core.error{
    kind = "rate_limited", method = method, path = path, retry_after = again, held = why,
    message = why
      and string.format("%s %s held back: %s; retry in %.3g s", method, path, HELD[why] or why, again)
      or string.format("%s %s would exceed the gateway's pacing limits; retry in %.3g s",
        method, path, again),
  }
  s.counts.last_error = err
  return err
end

-- The call's deadline passed before an attempt could be made (late: nothing was waited for).
local function late(method, path)
  return core.error{ kind = "timeout", method = method, path = path, late = true,
    message = "no time left of the call's deadline" }
end

-- Waits until `at` on the session's clock. A waiter may come back early — a host that resumes a
-- coroutine before its seconds, a keep-alive whose push channel had news — and a pacing slot or a
-- backoff must still be kept: it waits again for what is left (a clock that did not move at all
-- ends it: a test's frozen clock). Returns false when the work must stop meanwhile.
local function wait_until(s, w, at)
  local now = s.clock()
  while now < at do
    w.wait(at - now)
    if not w.live() then return false end
    local was = now
    now = s.clock()
    if now == was then break end
  end
  return true
end

-- Pacing before an attempt (when the pacer is not idle: its limits on, or a hold set): waits when
-- the pacer says so and the wait fits before `limit`.
-- Returns true, or nil plus the error to return (a retry keeps its real error `last_err`).
-- x: the attempt's trace record (nil when not tracing): `paced`, the seconds waited.
local function admit(s, w, method, path, last_err, limit, x)
  local now = s.clock()
  local wait, again, why = s.pacer:reserve(path, now, limit - now) -- a wait past limit books nothing
  if not wait then
    if last_err then return nil, last_err end
    return nil, refused(s, method, path, again, why)
  end
  if wait > 0 then
    s.counts.paced = s.counts.paced + 1
    if x then x.paced = wait end
    if not wait_until(s, w, now + wait) then return nil, w.gone(method, path) end
  end
  -- booked while an earlier request of the path was in flight: not before its answer + the limit
  local floor = PACED[path] and s.pacer:floor(path)
  if floor and floor > s.clock() then
    if floor >= limit then return nil, last_err or refused(s, method, path, floor - s.clock()) end
    if not wait_until(s, w, floor) then return nil, w.gone(method, path) end
  end
  return true
end

-- The gateway's Retry-After on 429/503 holds back every call of the session (ibkr/pacing.lua).
local function note_hold(s, err)
  local ra = err.retry_after
  if (err.status == 429 or err.status == 503) and type(ra) == "number" and ra > 0 then
    s.pacer:hold(s.clock() + ra)
  end
end

-- The options of one exchange: the caller's, plus the time it may take (the call's timeout,
-- or what is left of the call's deadline when that is less). repeatable: sending it twice is
-- harmless (a retryable call), so the core may send it on a kept-alive connection.
-- Without options of its own and with the session's whole timeout (no cut, no per-call timeout),
-- an exchange needs no table made for it (attempt_once passes REPEATABLE or nil): the core
-- session's own timeout is the caller's (ibkr.new gives both the same).
local REPEATABLE = { repeatable = true }
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

local attempts -- defined below: the token request is a call of its own

-- [signer] A token refused again and again (kinds.REFUSALS.token; OAuth 1.0a's live session
-- token, OAuth 2.0's access token or SSO session): from the second refusal in a row, renewals wait
-- kinds.backoff("token", n); a call that needs a token meanwhile fails at once (kind "auth", `hold`
-- and `retry_after` = seconds left, `cause` = the last refusal) without a request. Transport
-- failures (connect, timeout...) are no refusals.
local function note_token(s, err)
  if kinds.refusal(err) == "token" then
    local n = (s.streak.token or 0) + 1
    s.streak.token, s.token_seq, s.token_last = n, s.token_seq + 1, err
    local secs = kinds.backoff("token", n, s.random)
    if secs > 0 then s.token_until, s.token_err = s.clock() + secs, err end
  end
  return err
end

local function token_held(s)
  local left = s.token_until and s.token_until - s.clock()
  if not left or left <= 0 then return nil end
  local last = s.token_err
  return core.error{
    kind = "auth", method = last.method or "POST", path = last.path, status = last.status, cause = last,
    hold = left, retry_after = left, refusals = s.streak.token,
    message = string.format("token request held back %.3g s after %d refusals in a row (the last: %s)",
      left, s.streak.token, tostring(last.message)),
  }
end

-- [signer] Sessions with a signer, s.oauth: OAuth 1.0a (ibkr/oauth.lua) or OAuth 2.0
-- (ibkr/oauth2.lua). Its token is obtained or renewed first, then this attempt is signed afresh.
-- Returns the attempt's copts, or nil, err. A signer has:
--   fetching, fetching_until(deadline)  the mark of a renewal in progress (one at a time)
--   needs_token(now)                    whether a renewal must come first
--   renew(exchange, clock)              -> true | nil, err; exchange(method, path, copts) runs one
--                                          unsigned call (copts.via: another ibkr.core session,
--                                          for token endpoints elsewhere)
--   sign(method, path, copts)           -> copts of this attempt
--   refused(err, sent)                  -> whether err (to copts `sent`) refused the token: the
--                                          call then renews and tries once more
--   websocket_auth()                    -> { query =, headers = } the push channel's upgrade
--                                          carries, or nil when there is no token to give
-- One renewal at a time per session: other callers wait for it, each within its own deadline
-- `limit`. The renewal's exchanges are calls of their own (unsigned: `raw`) bounded by the same
-- deadline, so each gets the call's timeout or what is left of the deadline, whichever is less.
local function signed_copts(s, w, method, path, copts, limit, xsecs)
  local o = s.oauth
  local seq = s.token_seq
  while o.fetching and s.clock() < o.fetching do
    if s.clock() >= limit then return nil, late(method, path) end
    w.wait(BUSY_POLL)
    if not w.live() then return nil, w.gone(method, path) end
  end
  -- the renewal this call waited for was refused: its answer is this call's too (a burst of
  -- callers asks once)
  if s.token_seq ~= seq then return nil, s.token_last end
  if o:needs_token(s.clock()) then
    local held = token_held(s)
    if held then return nil, held end
    local busy <close> = o:fetching_until(limit) -- luacheck: ignore busy
    local ok, err = o:renew(function(m, p, c) return attempts(s, w, m, p, c, false, limit, xsecs, true) end,
      s.clock)
    if not ok then return nil, note_token(s, err) end
    s.streak.token, s.token_until = nil, nil
  end
  return o:sign(method, path, copts)
end

-- The trace record of one exchange (x, when tracing) gets what the exchange gave: seconds, bytes,
-- and its own outcome (res and meta, or nil and its error), whatever the call returns.
local function traced(x, t0, res, second, bytes)
  x.seconds, x.bytes, x.res, x.second = core.monotonic() - t0, bytes, res, second
  if x.via then x.base = x.via:info().base_url end
end

-- One attempt of `method path` within the call's deadline `limit`, each exchange given `xsecs`
-- seconds at most (signed first on an OAuth session unless `raw`). Returns res, meta; or nil,
-- err; or nil, err, true when the call must end with err now (closed or stopped mid-request, out
-- of time); a failure the exchange answered also returns, 4th, the copts it was sent with. A
-- failed token renewal is the attempt's error: the caller's retry rules apply to it as to any
-- other. x: the trace record (nil when not tracing).
local function attempt_once(s, w, method, path, copts, limit, xsecs, last_err, raw, repeatable, x)
  if s.oauth and not raw then -- [signer]
    local err
    copts, err = signed_copts(s, w, method, path, copts, limit, xsecs)
    if not copts then return nil, err end
  end
  local cs = copts and copts.via or s.core -- [signer] a token endpoint's own session
  local left = limit - s.clock()
  if left <= 0 then return nil, last_err or late(method, path), true end
  local cut = left < xsecs
  local xopts = (copts or cut or xsecs ~= s.timeout)
    and exchange_opts(copts, cut and left or xsecs, repeatable) or repeatable and REPEATABLE or nil
  local xw = cut and bounded(w, left) or w
  local t0 = x and core.monotonic()
  local aborted, res, err, status, head, bytes
  if xw.step then
    aborted, res, err, status, head, bytes = stepped(cs, xw, method, path, xopts)
  else
    res, err, status, head, bytes = cs:perform(method, path, xopts)
  end
  local m = res ~= nil and meta.new(status, head) or nil
  if x then x.via = copts and copts.via; traced(x, t0, res, m or err, bytes) end
  if aborted and err.kind ~= "timeout" then return nil, err, true end -- closed or stopped
  if aborted then return nil, last_err or err, true end -- out of time: what the gateway said before
  if s.closed then return nil, closed_error(method, path), true end
  count(s, res, err, status, path)
  if s.pacer.limits and (PACED[path] or path:find("?", 1, true)) then s.pacer:answered(path, s.clock()) end
  if res ~= nil then return res, m end
  note_hold(s, err)
  if cut and err.kind == "timeout" and last_err then return nil, last_err, true end
  return nil, err, nil, copts
end

-- The trace event of an exchange (x: its record, or nil when not tracing; retry: seconds until
-- the call tries again).
local function trace_exchange(s, method, path, copts, n, x, retry_in)
  if x and x.seconds then
    if s.oauth then -- [signer] nothing it holds in an event, whatever the endpoint echoed
      local secrets = s.oauth:secrets()
      if x.res == nil then redact.error(x.second, secrets)
      elseif s.tracer.body then x.res = redact.value(x.res, secrets) end
    end
    x.retry = retry_in
    s.tracer:exchange(method, path, copts, n, x.res, x.second, x)
  end
end

-- Performs `method path` for caller `s` with waiter `w`.
-- allow_retry: whether retryable failures are tried again (s.retries times at most).
-- limit: the absolute time (the session's clock) by which the call must end: all attempts,
-- backoff and pacing waits included; xsecs: the seconds one exchange may take (c:bounds).
-- When the deadline cuts an attempt short, the previous attempt's answer is returned (what the
-- gateway said is worth more than "timeout").
-- raw: [signer] true for the token requests themselves (not signed, no renewal).
-- Returns result, meta on success, or nil, err. Each exchange is traced (s.tracer).
function attempts(s, w, method, path, copts, allow_retry, limit, xsecs, raw)
  if s.closed then return nil, closed_error(method, path) end
  local attempt, n = 0, 0 -- failed attempts (for the retry rules), exchanges (for the trace)
  local last_err
  local renewed -- [signer] the token was renewed once after a refusal
  local tracer = s.tracer
  local x = tracer and { token = raw or nil } -- the trace record of the current attempt
  while true do
    if x then x.seconds, x.bytes, x.retry, x.paced, x.res, x.second = nil, nil, nil, nil, nil, nil end
    n = n + 1
    if not s.pacer:idle() then -- a booking, maybe a wait (admit)
      local ok, perr = admit(s, w, method, path, last_err, limit, x)
      if not ok then
        if x and perr ~= last_err then
          if s.oauth then redact.error(perr, s.oauth:secrets()) end -- [signer]
          tracer:held(method, path, copts, n, perr, x)
        end
        return nil, perr
      end
    end
    local res, err, final, sent =
      attempt_once(s, w, method, path, copts, limit, xsecs, last_err, raw, allow_retry, x)
    if res ~= nil then
      if x then trace_exchange(s, method, path, copts, n, x) end
      return res, err
    end
    if final then
      if x then trace_exchange(s, method, path, copts, n, x) end
      return nil, err
    end
    if s.oauth and not raw and not renewed and s.oauth:refused(err, sent) then -- [signer] new token, once
      renewed = true
      last_err = err
      trace_exchange(s, method, path, copts, n, x, 0)
    else
      attempt = attempt + 1
      local delay = allow_retry and attempt <= s.retries and retry.retryable(err)
        and retry.delay(attempt, err.retry_after, s.random)
      local held = delay and s.pacer:held(s.clock()) -- a hold the answer set: no retry before it ends
      if held and held > delay then delay = held end
      if not delay or s.clock() + delay >= limit then
        trace_exchange(s, method, path, copts, n, x)
        return nil, err
      end
      trace_exchange(s, method, path, copts, n, x, delay)
      s.counts.retries = s.counts.retries + 1
      last_err = err
      if not wait_until(s, w, s.clock() + delay) then return nil, w.gone(method, path) end
    end
  end
end

-- A failed call's outcome for the streak of failed calls (kinds.REFUSALS.server): a call that
-- ended in a 5xx without Retry-After makes the next attempts of pollers (the keep-alive,
-- wait_ready) wait kinds.backoff("server", n) (Caller:backoff); any other answer ends the streak
-- (a success ends it in Caller:run). The token requests of a signer (attempts' `raw`) count for
-- nothing here.
local function note_call(s, err)
  if kinds.refusal(err) == "server" then
    local n = (s.streak.server or 0) + 1
    s.streak.server = n
    s.server_until = s.clock() + kinds.backoff("server", n, s.random)
  elseif err.status then
    s.streak.server, s.server_until = nil, nil
  end
end

-- new{ core = the core session, clock = function, timeout = seconds of one exchange,
--      deadline = seconds of one call (nil: a call's timeout + `extra`), extra = seconds,
--      retries = n, pacer = ibkr.pacing object (a new one with the gateway's limits when nil),
--      oauth = signer or nil, random = math.random-like, hint = the context of err.hint:
--      { url =, cacert =, proxy = } (ibkr/kinds.lua), tracer = ibkr/trace.lua's or nil }
function M.new(o)
  return setmetatable({
    core = o.core, clock = o.clock, timeout = o.timeout, deadline = o.deadline, extra = o.extra or 0,
    retries = o.retries, random = o.random or math.random, tracer = o.tracer,
    pacer = o.pacer or pacing.new(), oauth = o.oauth, closed = false, hint = o.hint or {},
    counts = stats.new(), -- the counters of s:stats() (ibkr/stats.lua)
    streak = {},        -- refusal class -> refusals (or failed calls) in a row (kinds.REFUSALS)
    server_until = nil, -- the streak of 5xx calls asks pollers to wait until then
    token_until = nil, token_err = nil, -- [signer] token requests wait until then; the last refusal
    token_seq = 0, token_last = nil,    -- [signer] refusals so far, and the latest
  }, Caller)
end

-- Gives err its hint (err.hint: what the evidence shows, from the registry) unless it has one;
-- returns err.
function Caller:hinted(err)
  if err.hint == nil then err.hint = kinds.hint(err, self.hint) end
  -- [signer] the one place every error of a signed session passes (its calls', its push
  -- channel's): nothing the signer holds in it, whatever the endpoint echoed (ibkr/redact.lua)
  if self.oauth then redact.error(err, self.oauth:secrets()) end
  return err
end

-- The bounds of a call that starts now: its absolute deadline on the session's clock, and the
-- seconds each of its exchanges may take. `timeout`, `deadline`: the call's own (seconds), or
-- nil for the session's; a session created without a deadline gives each call its timeout +
-- `extra`, as ibkr.new does. `cap`: an absolute time the call must end by anyway (the
-- keep-alive's, wait_ready's), or nil.
function Caller:bounds(timeout, deadline, cap)
  timeout = timeout or self.timeout
  local limit = self.clock() + (deadline or self.deadline or timeout + self.extra)
  if cap and cap < limit then limit = cap end
  return limit, timeout
end

-- The error a call returns carries err.hint. `limit` and `timeout` as c:bounds() gives them
-- (nil: the session's). A call made from the session's own trace function raises.
function Caller:run(w, method, path, copts, allow_retry, limit, timeout)
  local tracer = self.tracer
  if tracer and tracer.busy then
    check.raise(string.format("ibkr: %s %s called from the session's own trace function (a trace "
      .. "function runs between exchanges and must not call its session)", method, path), 2)
  end
  if limit == nil then -- the session's bounds (c:bounds without its call: the common case)
    timeout = timeout or self.timeout
    limit = self.clock() + (self.deadline or timeout + self.extra)
  end
  local res, second = attempts(self, w, method, path, copts, allow_retry, limit, timeout or self.timeout)
  if res ~= nil then
    self.streak.server, self.server_until = nil, nil -- an answer ends the streak of failed calls
    return res, second
  end
  note_call(self, second)
  return nil, self:hinted(second) -- (redacted there)
end

-- The counters (docs/ibkr.md, s:stats()): a new table, with the core's while it is open.
function Caller:stats()
  local t = stats.snapshot(self.counts, self.clock())
  if not self.closed then
    local info = self.core:info()
    t.connects, t.exchanges, t.in_flight = info.connects, info.exchanges, info.in_flight
  end
  local tracer = self.tracer
  t.trace_errors = tracer and tracer.errors or 0
  t.trace_error = tracer and tracer.last_error or nil
  return t
end

-- What the session saw, for its counters (ibkr/stats.lua): an answer of the session endpoint
-- `name`, a state observed, the push channel connected or lost.
-- (`now`: the session's clock, when the caller has just read it)
function Caller:answered(name, res)
  if stats.READS[name] then stats.answer(self.counts, self.clock(), name, res) end
end
function Caller:observed(st, now) stats.state(self.counts, now or self.clock(), st) end
function Caller:pushed(connected) stats.push(self.counts, connected) end

-- Seconds left of a hold that keeps calls back (the gateway's Retry-After, a 429 without one,
-- [oauth] the token requests after repeated refusals), or nil.
function Caller:held(now)
  now = now or self.clock()
  local held = self.pacer:held(now)
  local token = self.token_until and self.token_until - now
  if token and token > 0 and (not held or token > held) then held = token end
  return held
end

-- Seconds the streak of failed calls (5xx) asks repeated attempts to wait still, or nil.
function Caller:backoff(now)
  local left = self.server_until and self.server_until - (now or self.clock())
  if left and left > 0 then return left end
  return nil
end

-- The push channel's websocket to `path` (ibkr/stream.lua, through s:push_socket), authenticated
-- with the session id `sid` (the /tickle answer's session): with the gateway the cookie
-- api={"session":"<sid>"} (ibind, bezant); with a signer the cookie api=<sid> and the signer's
-- credential, which IBKR takes in the upgrade's query (a socket cannot be signed per message:
-- OAuth 1.0a's oauth_token, OAuth 2.0's bearer_token; ibkrdotnet's StreamingCredential). The
-- connect and TLS handshake get the session's timeout. Returns the core websocket, or nil, err
-- (kind "auth": the signer's token is due for renewal, which only a call does).
function Caller:websocket(path, sid, max_message)
  if self.closed then return nil, closed_error("GET", path) end
  local opts = { timeout = self.timeout, max_message = max_message }
  local o = self.oauth
  if o then -- [signer]
    local auth = not o:needs_token(self.clock()) and o:websocket_auth()
    if not auth then
      return nil, self:hinted(core.error{ kind = "auth", method = "GET", path = path,
        message = "no token for the websocket now: the next call renews it" })
    end
    opts.query, opts.headers = auth.query, { Cookie = "api=" .. sid }
    for k, v in pairs(auth.headers or {}) do opts.headers[k] = v end
  else
    opts.headers = { Cookie = 'api={"session":"' .. sid .. '"}' }
  end
  return self.core:websocket(path, opts)
end

-- Closes the core session and wipes the signer (its keys and token); idempotent.
function Caller:close()
  if not self.closed then
    self.closed = true
    self.core:close()
    if self.oauth then self.oauth:close() end -- [oauth]
  end
end

return M
