-- The gateway's pacing limits as sliding windows: /tickle 1 per second, /sso/validate 1 per
-- minute, everything together 10 per second. Only admitted requests use up a window.
local pacing = {}
pacing.__index = pacing

pacing.rules = {
  global = { limit = 10, period = 1 },
  ["/tickle"] = { limit = 1, period = 1 },
  ["/sso/validate"] = { limit = 1, period = 60 },
}

function pacing.new()
  return setmetatable({ windows = {} }, pacing)
end

function pacing:reset()
  self.windows = {}
end

-- Seconds until key admits one more request (0 when it does now).
local function wait_for(self, key, rule, now)
  local w = self.windows[key] or {}
  local kept = {}
  for _, t in ipairs(w) do
    if t > now - rule.period then
      kept[#kept + 1] = t
    end
  end
  self.windows[key] = kept
  if #kept < rule.limit then
    return 0
  end
  return kept[#kept - rule.limit + 1] + rule.period - now
end

-- Returns true (and records the request), or false, retry_after (seconds), rule key.
function pacing:admit(path, now)
  local keys = { "global" }
  if pacing.rules[path] then
    keys[2] = path
  end
  local worst, worst_key = 0, nil
  for _, key in ipairs(keys) do
    local w = wait_for(self, key, pacing.rules[key], now)
    if w > worst then
      worst, worst_key = w, key
    end
  end
  if worst > 0 then
    return false, worst, worst_key
  end
  for _, key in ipairs(keys) do
    local w = self.windows[key]
    w[#w + 1] = now
  end
  return true
end

return pacing
