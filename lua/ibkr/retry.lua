-- Retry policy: which failures are retried and how long to wait before the next attempt.
-- Pure functions (the random source is a parameter), so the arithmetic is testable.

local kinds = require("ibkr.kinds")

local M = {}

M.BASE = 0.25          -- first backoff step, seconds
M.CAP = 8              -- no backoff step grows beyond this

-- Which failures may succeed when tried again is the registry's (ibkr/kinds.lua): transport
-- failures before or during the exchange (connect, timeout, a connection dropped before any
-- response: no_response) and the gateway's "not now" answers (429, 503). Callers retry only
-- requests that are safe to repeat.
M.no_response = kinds.no_response
M.retryable = kinds.retryable

-- Seconds to wait before retry number `attempt` (1 = first retry): exponential backoff with
-- "equal jitter" (half fixed, half random, so waits never collapse to zero), never shorter than
-- the server's Retry-After. Whether that wait still fits the call's deadline is the caller's
-- business (ibkr/call.lua). `random` is math.random-like: with no argument a float in [0, 1).
function M.delay(attempt, retry_after, random)
  local step = M.BASE * 2 ^ (attempt - 1)
  if step > M.CAP then step = M.CAP end
  local d = step / 2 + (random or math.random)() * step / 2
  if retry_after and retry_after > d then d = retry_after end
  return d
end

-- Seconds before repair number `n` (1 = after the first failed repair) when repairs keep
-- failing: base * 2^(n-1), at most cap. The keep-alive uses its retry_interval as base.
function M.repair_backoff(n, base, cap)
  local d = base * 2 ^ (n - 1)
  if d > cap then d = cap end
  return d
end

return M
