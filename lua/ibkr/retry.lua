-- Retry policy: which failures are retried and how long to wait before the next attempt.
-- Pure functions (the random source is a parameter), so the arithmetic is testable.

local M = {}

M.BASE = 0.25          -- first backoff step, seconds
M.CAP = 8              -- no backoff step grows beyond this
M.MAX_RETRY_AFTER = 10 -- a Retry-After longer than this is not waited for: the error is returned

-- Whether the failure `err` may succeed when tried again: transport failures before or during
-- the exchange (connect, timeout) and the gateway's "not now" answers (429, 503).
function M.retryable(err)
  local kind = err.kind
  if kind == "connect" or kind == "timeout" then return true end
  return kind == "http" and (err.status == 429 or err.status == 503)
end

-- Seconds to wait before retry number `attempt` (1 = first retry): exponential backoff with
-- "equal jitter" (half fixed, half random, so waits never collapse to zero), never shorter than
-- the server's Retry-After. Returns nil when the server asks for a wait over MAX_RETRY_AFTER.
-- `random` is math.random-like: called with no argument it returns a float in [0, 1).
function M.delay(attempt, retry_after, random)
  local step = M.BASE * 2 ^ (attempt - 1)
  if step > M.CAP then step = M.CAP end
  local d = step / 2 + (random or math.random)() * step / 2
  if retry_after then
    if retry_after > M.MAX_RETRY_AFTER then return nil end
    if retry_after > d then d = retry_after end
  end
  return d
end

return M
