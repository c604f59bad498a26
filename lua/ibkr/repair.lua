-- Repairing a brokerage session that is connected but not ready: escalation and backoff.
--
-- One repair (M.run):
--   1. POST /iserver/auth/ssodh/init. When its answer judges well and /iserver/auth/status then
--      says ready — at once or within INIT_SETTLE seconds (polled) — the repair succeeded.
--      ssodh/init's own answer is no proof: some gateways answer it authenticated and drop the
--      session again at once (field reports ibeam #130, #7); only auth/status confirms.
--   2. Otherwise — ssodh/init failed (any HTTP error: 5xx, 404/405/410, a timeout, a refused
--      body) or the session is still not ready after it — POST /iserver/reauthenticate, the
--      fallback that still revives sessions whose ssodh/init answers 503 or 410 for hours (field
--      reports: ibeam #19, #174).
--   3. reauthenticate is asynchronous ({"message":"triggered"}, effective ~15 s later, facts
--      §1.6): it is given REAUTH_WAIT seconds, polling /iserver/auth/status every POLL seconds,
--      and never triggered again inside that time.
-- Every action is reported to on_repair(action, status, err) with the truth: `status` only when
-- it led to a ready session, else `err`. A repair that did not end ready counts as failed;
-- repeated failed repairs back off (M.new: base, doubling, capped). So does a repair that did not
-- stick: a session seen not ready again before a look STICK seconds after the repair saw it ready.
--
-- Uses the session only through its keep-alive interface (ibkr/init.lua): s:endpoint, s:now.

local core = require("ibkr.core")
local kinds = require("ibkr.kinds")
local state = require("ibkr.state")
local retry = require("ibkr.retry")

local M = {}

M.INIT_SETTLE = 3   -- seconds a session may take to become ready after a good ssodh/init
M.REAUTH_WAIT = 15  -- seconds reauthenticate is given before the repair counts as failed
M.POLL = 1          -- seconds between two status polls while waiting
M.BACKOFF_CAP = 300 -- seconds: the longest pause between two failed repairs
M.STICK = 60        -- seconds a repaired session must stay ready for the repair to count

-- Whether a session in state `st` is one a repair can help: connected but not authenticated,
-- not connected to IBKR's backend, or competing when the caller allows taking the session over.
function M.wanted(st, compete)
  return st == "unauthenticated" or st == "disconnected" or (st == "competing" and compete == true)
end

local refused = state.refusal

-- Polls /iserver/auth/status until ready or `secs` have passed (or `limit`, an absolute time).
-- Returns the status table when ready, else nil, the last state an answer showed (a poll the
-- deadline or a hold kept back shows none), its detail, and the seconds it waited.
local function settle(s, w, secs, limit, alive)
  local start = s:now()
  local stop = start + secs
  if limit and limit < stop then stop = limit end
  local st, detail
  while alive() do
    local r, e = s:endpoint(w, "auth_status", nil, limit)
    if r ~= nil then
      local ok, why = state.judge("auth_status", r)
      st = ok and state.of_status(r) or "error"
      detail = ok and r or refused("POST", "/iserver/auth/status", r, why)
      if st == "ready" then return r end
    elseif kinds.observed(e) or not st then
      st, detail = kinds.state(e), e
    end
    local left = stop - s:now()
    if left <= 0 then break end
    w.wait(left < M.POLL and left or M.POLL)
  end
  return nil, st, detail, math.max(0, stop - start)
end

-- The error for "the action was taken but the session did not become ready" (`action` says
-- which, `state` what auth/status said last).
local function not_ready(action, secs, st, detail)
  local said = core.is_error(detail) and detail.message or state.said(detail)
  return core.error{ kind = "timeout", state = st, action = action, method = "POST",
    path = "/iserver/auth/status",
    cause = core.is_error(detail) and detail or nil,
    message = string.format("session not ready %g s after %s (state: %s%s)", secs, action,
      tostring(st), said and (": " .. said) or "") }
end

-- Step 1: ssodh/init. Returns the ready status, or nil, err.
local function try_init(s, w, compete, limit, alive)
  local r, e = s:endpoint(w, "init_brokerage", compete, limit)
  if r == nil then return nil, e end
  local ok, why = state.judge("init_brokerage", r)
  if not ok then return nil, refused("POST", "/iserver/auth/ssodh/init", r, why) end
  local ready, st, detail, waited = settle(s, w, M.INIT_SETTLE, limit, alive) -- auth/status decides
  if ready then return ready end
  return nil, not_ready("ssodh/init", waited, st, detail or r)
end

-- Step 2 and 3: reauthenticate, then wait for it. Returns the ready status, or nil, err.
local function try_reauth(s, w, limit, alive)
  local r, e = s:endpoint(w, "reauthenticate", nil, limit)
  if r == nil then return nil, e end
  local ok, why = state.judge("reauthenticate", r)
  if not ok then return nil, refused("POST", "/iserver/reauthenticate", r, why) end
  local ready, st, detail, waited = settle(s, w, M.REAUTH_WAIT, limit, alive)
  if ready then return ready end
  return nil, not_ready("reauthenticate", waited, st, detail)
end

-- run(s, w, {compete=, limit=, alive=, on_repair=}) -> status (ready) or nil, err
-- One repair as described above. `w` is the caller's waiter, `limit` an optional absolute
-- deadline (the session's clock), `alive()` false once the caller must stop, `on_repair(action,
-- status, err)` is called after each action. Never raises on gateway answers.
function M.run(s, w, o)
  local alive = o.alive or function() return true end
  local report = o.on_repair or function() end
  local ready, err = try_init(s, w, o.compete, o.limit, alive)
  if not alive() then return nil, err end
  report("init_brokerage", ready, err)
  if ready then return ready end
  if o.limit and s:now() >= o.limit then return nil, err end
  ready, err = try_reauth(s, w, o.limit, alive)
  if not alive() then return nil, err end
  report("reauthenticate", ready, err)
  return ready, err
end

-- A schedule of repairs: due(now) says whether one may start; failed(now) pushes the next one
-- back base, 2·base, 4·base ... at most `cap` seconds; repaired(now) notes a repair auth/status
-- confirmed, which counts once it sticks; seen(ready, now) is what a later look saw: ready
-- STICK seconds or more after the repair (or with no repair pending) resets the backoff; not
-- ready before that means the repair did not stick: a failed repair.
local Schedule = {}
Schedule.__index = Schedule

function M.new(base, cap)
  return setmetatable({ base = base, cap = cap or M.BACKOFF_CAP, fails = 0, next_at = nil,
    repaired_at = nil }, Schedule)
end

function Schedule:due(now) return self.next_at == nil or now >= self.next_at end

function Schedule:failed(now)
  self.fails = self.fails + 1
  self.repaired_at = nil
  self.next_at = now + retry.repair_backoff(self.fails, self.base, self.cap)
  return self.next_at - now
end

function Schedule:repaired(now)
  self.repaired_at, self.next_at = now, nil
end

function Schedule:seen(ready, now)
  local at = self.repaired_at
  if ready then
    if at == nil or now - at >= M.STICK then self.fails, self.next_at, self.repaired_at = 0, nil, nil end
  elseif at ~= nil then
    return self:failed(now)
  end
end

return M
