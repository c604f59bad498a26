-- Client-side pacing: keeps one session inside the gateway's published limits
-- (/tickle 1 per second, /sso/validate 1 per minute, all requests together 10 per second).
--
-- A pacer only does arithmetic on times given to it; it never reads a clock nor sleeps, so the
-- session decides how to wait (sleep, yield, host sleep) and tests use plain numbers.
-- Every attempt is booked, failed ones too: the gateway counts what reaches it.
--
-- The pacer also keeps the gateway's own "wait": a Retry-After on a 429/503 answer holds back
-- every request of the session until that time (hold()); this works with `limits = false` too
-- (pacing = false turns off only the client's own limits, never the gateway's).

local M = {}

-- Seconds between two requests to the same path (query string ignored).
M.PATH_INTERVAL = {
  ["/tickle"] = 1,
  ["/sso/validate"] = 60,
}
M.GLOBAL_COUNT = 10     -- at most this many requests ...
M.GLOBAL_WINDOW = 1     -- ... in any window of this many seconds
M.MAX_WAIT = 1.5        -- a call waits up to this long; beyond, it is refused ("rate_limited")
-- Added to every spacing above. The gateway counts arrivals, the pacer bookings: a request reaches
-- the gateway a little after its booked time, the first of a connection later than the rest (the
-- connect, the TLS handshake), so sends spaced by the limit alone let the 11th arrive inside the
-- first one's second (seen against the mock: 0.1-5 ms early, a 429 and a 1 s hold each time).
M.MARGIN = 0.05

local Pacer = {}
Pacer.__index = Pacer

-- new{limits = true}: limits = false keeps only the gateway's holds (Retry-After).
function M.new(opts)
  -- booked: sorted send times booked by recent calls (all paths); last: path -> last booked time
  -- (or a later answer); answered_at: path -> the latest answer (answered(), floor())
  -- until: no request before this time (the gateway's Retry-After), or nil
  local limits = not (opts and opts.limits == false)
  return setmetatable({ booked = {}, last = {}, answered_at = {}, limits = limits, until_t = nil }, Pacer)
end

-- Holds back every request until `t` (a later hold extends it, an earlier one never shortens).
-- `why` says what the hold is for (kept with the hold that ends last): "retry_after" (the
-- gateway's Retry-After, the default) or "pacing" (a 429 without one: ibkr/kinds.lua's backoff).
function Pacer:hold(t, why)
  if t == t and (not self.until_t or t > self.until_t) then
    self.until_t, self.why = t, why or "retry_after"
  end
end

-- Seconds left of the gateway's hold at `now` and what it is for, or nil when there is none.
function Pacer:held(now)
  local u = self.until_t
  if u and u > now then return u - now, self.why end
  self.until_t = nil
  return nil
end

local function key_of(path)
  return path:match("^[^?#]*")
end

-- True when one more send at `t` keeps every window of GLOBAL_WINDOW seconds at or under
-- GLOBAL_COUNT sends: in the sorted sequence with t inserted, any GLOBAL_COUNT+1 consecutive
-- sends must span at least GLOBAL_WINDOW.
local function fits(booked, t)
  local seq, placed = {}, false
  for _, b in ipairs(booked) do
    if not placed and t < b then seq[#seq + 1] = t; placed = true end
    seq[#seq + 1] = b
  end
  if not placed then seq[#seq + 1] = t end
  local n = M.GLOBAL_COUNT
  for i = 1, #seq - n do
    if seq[i + n] - seq[i] < M.GLOBAL_WINDOW + M.MARGIN - 1e-9 then return false end -- 1e-9: float slack
  end
  return true
end

-- Earliest time >= now at which a request to `path` may be sent. The answer is `now`, the
-- path's own limit, or some booked send + GLOBAL_WINDOW (+ MARGIN): try those in order.
function Pacer:earliest(path, now)
  local booked = self.booked
  while booked[1] and booked[1] <= now - M.GLOBAL_WINDOW - M.MARGIN do table.remove(booked, 1) end
  local t = now
  local key = key_of(path)
  local interval, last = M.PATH_INTERVAL[key], self.last[key]
  if interval and last and last + interval + M.MARGIN > t then t = last + interval + M.MARGIN end
  if fits(booked, t) then return t end
  for _, b in ipairs(booked) do
    local c = b + M.GLOBAL_WINDOW + M.MARGIN
    if c > t and fits(booked, c) then return c end
  end
  return t -- not reached: past the last booking + window every window has room
end

-- Whether a request may go now without booking anything: the client's limits are off and no
-- hold is set (reserve would return 0). What a caller asks before reading its clock for reserve.
function Pacer:idle()
  return not self.limits and not self.until_t
end

-- The answer to a request of `path` came at `t`, so the request reached the gateway no later: the
-- path's own limit counts from `t` when that is after its latest booking. A request reaches the
-- gateway after its booked send, the first of a connection much later (the connect, the TLS
-- handshake: tens of ms on a loaded machine, more over a network), and MARGIN alone does not cover
-- that: the next tickle, booked a second after the first one's send, arrived less than a second
-- after it (a 429, and a hold). (The window of all requests keeps its bookings: ten a second.)
-- A request booked while an earlier one of its path was still in flight was booked from that
-- one's send: not before `floor(path)` either (see below).
function Pacer:answered(path, t)
  local key = key_of(path)
  if not M.PATH_INTERVAL[key] then return end
  local last = self.last[key]
  if not last or t > last then self.last[key] = t end
  local a = self.answered_at[key]
  if not a or t > a then self.answered_at[key] = t end
end

-- The earliest send of `path` that keeps its own limit from the latest answer to a request of
-- that path (answered()), or nil: what a request booked before that answer came asks right
-- before it is sent (two callers of one session: a keep-alive and its push channel's tickle).
function Pacer:floor(path)
  local key = key_of(path)
  local a = self.answered_at[key]
  return a and a + M.PATH_INTERVAL[key] + M.MARGIN
end

-- Books a send of `path` as early as the limits allow.
-- Returns the seconds to wait before sending (0 = now), or nil plus the seconds after which the
-- call may be tried again when the wait would exceed MAX_WAIT, or reach `within` (the seconds the
-- caller has left, optional: a call's deadline) when it is not 0 (nothing is booked then) plus,
-- when the reason is a hold (not the client's own limits), what the hold is for (hold()'s `why`):
-- a hold is never waited for here, however short — the caller decides (a retry may wait for it).
-- Bookings are made at once, so concurrent callers (coroutines) see each other's reservations.
function Pacer:reserve(path, now, within)
  if self.until_t then -- (held() clears a hold that ended)
    local held, why = self:held(now)
    if held then return nil, held, why end
  end
  if not self.limits then return 0 end
  local t = self:earliest(path, now)
  local wait = t - now
  if wait > M.MAX_WAIT or (within and wait > 0 and wait >= within) then return nil, wait end
  local booked, i = self.booked, #self.booked + 1
  while i > 1 and booked[i - 1] > t do i = i - 1 end
  table.insert(booked, i, t)
  self.last[key_of(path)] = t
  return wait
end

return M
