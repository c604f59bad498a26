-- The counters of a session: what s:stats() returns (docs/ibkr.md, "s:stats()"), counted here from
-- a few hooks in the session's code, and read by ibkr.metrics and the CLI's /metrics.
-- Counters only ever grow; ages are computed when read. Times are on the session's clock (the
-- `clock` option), so a fake clock gives exact figures. No I/O.
--
-- Hooks (each one line where it happens):
--   M.exchange(t, now, path, res, err)   call.lua, after every exchange sent (attempts, not calls)
--   M.answer(t, now, name, res)          init.lua, after a call of a session endpoint in M.READS
--   M.state(t, now, state)               init.lua, whenever the state observed (s:state()) changes
--   M.push(t, connected)                 init.lua's s:note_push(connected): the push channel
--                                        (ibkr.stream) calls it on every connect and loss

local M = {}

-- Session endpoints by path: the `endpoint` label of their requests. Any other path (s:request)
-- counts as "other", so the number of series stays bounded whatever a program calls.
M.ENDPOINTS = {
  ["/tickle"] = true, ["/iserver/auth/status"] = true, ["/sso/validate"] = true,
  ["/iserver/auth/ssodh/init"] = true, ["/iserver/reauthenticate"] = true, ["/logout"] = true,
  ["/oauth/live_session_token"] = true,
}

-- The repair actions (the names of the session calls, as on_repair reports them).
M.REPAIRS = { init_brokerage = true, reauthenticate = true }

-- The session calls whose answers answer() reads (the repairs, and the two that tell the SSO
-- session's remaining time): a caller need not call it for the others.
M.READS = { init_brokerage = true, reauthenticate = true, tickle = true, sso_validate = true }

function M.new()
  return {
    requests = 0, failures = 0, retries = 0, rate_limited = 0, paced = 0,
    by_endpoint = {},   -- path -> outcome -> count
    repairs = {},       -- action -> count
    state_changes = 0,
  }
end

-- The outcome of one exchange: "ok" (a 2xx answer), "http_<status>" for any other status, or the
-- error's kind ("connect", "timeout", "tls", "json", "protocol", "too_large", ...).
function M.outcome(res, err)
  if res ~= nil then return "ok" end
  if err.kind == "http" and math.type(err.status) == "integer" then return "http_" .. err.status end
  return tostring(err.kind)
end

function M.exchange(t, now, path, res, err)
  local ep = M.ENDPOINTS[path] and path -- a session endpoint as the session sends it: no query
  if not ep then
    local p = type(path) == "string" and path:match("^[^?]*")
    ep = p and M.ENDPOINTS[p] and p or "other"
  end
  local by = t.by_endpoint[ep]
  if not by then
    by = {}
    t.by_endpoint[ep] = by
  end
  local oc = res ~= nil and "ok" or M.outcome(res, err)
  by[oc] = (by[oc] or 0) + 1
  if res ~= nil then t.last_success = now end
end

-- What a session endpoint's answer says beyond its state: the SSO session's remaining time
-- (tickle: ssoExpires, /sso/validate: EXPIRES, both in milliseconds: facts §1.3, §1.4), and the
-- repair actions taken (every call of ssodh/init and reauthenticate, whatever its outcome).
function M.answer(t, now, name, res)
  if M.REPAIRS[name] then t.repairs[name] = (t.repairs[name] or 0) + 1 end
  if type(res) ~= "table" then return end
  local ms = (name == "tickle" and res.ssoExpires) or (name == "sso_validate" and res.EXPIRES) or nil
  if type(ms) == "number" and ms == ms and ms >= 0 and ms < 1e15 then
    t.sso_expires, t.sso_said = ms / 1000, now
  end
end

function M.state(t, now, st)
  if st ~= t.state then
    if t.state ~= nil then t.state_changes = t.state_changes + 1 end
    t.state, t.state_since = st, now
  end
end

-- For the push channel: connected (boolean) now; a reconnect is a connect after the first one.
function M.push(t, connected)
  if connected and t.push_connected == false then t.push_reconnects = (t.push_reconnects or 0) + 1 end
  if connected and t.push_reconnects == nil then t.push_reconnects = 0 end
  t.push_connected = connected == true
end

local function copy(v)
  if type(v) ~= "table" or getmetatable(v) ~= nil then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = copy(x) end
  return c
end

-- A new table for s:stats(): every counter, and the ages at `now`.
function M.snapshot(t, now)
  local c = copy(t)
  c.state_since, c.sso_said, c.last_success = nil, nil, nil
  if t.state_since then c.state_age = math.max(0, now - t.state_since) end
  if t.last_success then c.last_success_age = math.max(0, now - t.last_success) end
  if t.sso_expires then c.sso_expires = math.max(0, t.sso_expires - (now - t.sso_said)) end
  return c
end

return M
