-- The control API under /__mock/ (at the server root): JSON in, JSON out; never logged,
-- never paced, never subject to faults.
local json = require("ibkr.mock.json")
local response = require("ibkr.mock.response")
local gateway_mod = require("ibkr.mock.gateway")
local faults_mod = require("ibkr.mock.faults")

local control = {}

-- Config keys: where they live and how they are checked.
local server_keys = {
  head_timeout = "positive", keepalive_timeout = "positive", body_timeout = "positive",
  write_timeout = "positive", max_body = "positive",
}
local gateway_keys = {
  pacing = "boolean", idle_timeout = "nonnegative", init_delay = "nonnegative",
  reauth_delay = "nonnegative", sso_window = "positive", log_limit = "positive",
  connection_close = "boolean", relapse = "nonnegative", relapse_requests = "nonnegative",
}

local function check(kind, v)
  if kind == "boolean" then
    return type(v) == "boolean"
  end
  if type(v) ~= "number" or v ~= v or v == math.huge then
    return false
  end
  if kind == "positive" then
    return v > 0
  end
  return v >= 0
end

function control.config(m)
  local c = {}
  for k in pairs(gateway_keys) do
    c[k] = m.gateway.config[k]
  end
  for k in pairs(server_keys) do
    c[k] = m.server[k]
  end
  c.verbose = m.verbose and true or false
  return c
end

-- The kind of a setting ("boolean", "positive", "nonnegative"), nil for an unknown name.
function control.setting_kind(k)
  return gateway_keys[k] or server_keys[k] or (k == "verbose" and "boolean") or nil
end

-- Checks a table of settings. Returns true or nil, message.
function control.check_config(t)
  if type(t) ~= "table" then
    return nil, "config must be a JSON object"
  end
  for k, v in pairs(t) do
    local kind = control.setting_kind(k)
    if not kind then
      return nil, "unknown config key: " .. tostring(k)
    end
    if not check(kind, v) then
      return nil, "bad value for " .. k .. " (" .. kind .. " expected)"
    end
  end
  return true
end

-- Splits checked settings into the gateway's and the server's.
function control.split_config(t)
  local g, srv = {}, {}
  for k, v in pairs(t) do
    if gateway_keys[k] then
      g[k] = v
    elseif server_keys[k] then
      srv[k] = v
    end
  end
  return g, srv
end

-- Applies a config table. Returns true or nil, message (nothing applied on error).
function control.apply_config(m, t)
  local ok, err = control.check_config(t)
  if not ok then
    return nil, err
  end
  for k, v in pairs(t) do
    if gateway_keys[k] then
      m.gateway.config[k] = v
    elseif server_keys[k] then
      m.server[k] = v
    else
      m:set_verbose(v)
    end
  end
  return true
end

-- The penalty box as JSON: {"in": seconds left, "retry_after": n, "extend": bool, "hits": n} or null.
function control.penalty(g, now)
  local p = g.penalty
  if not p or now >= p["until"] then
    return json.null
  end
  return { ["in"] = p["until"] - now, retry_after = p.retry_after, extend = p.extend, hits = p.hits }
end

function control.state(m)
  local g = m.gateway
  local now = g.clock()
  g:tick(now)
  local srv = m.server
  return {
    state = g.state,
    pending = g.pending and { state = g.pending.state, ["in"] = math.max(0, g.pending.at - now) }
      or json.null,
    pid = m.pid or json.null,
    url = m.url,
    root = m.root,
    tls = m.tls,
    session = g.session,
    idle_for = now - g.last_api,
    config = control.config(m),
    counters = {
      requests = g.counters.requests,
      rate_limited = g.counters.rate_limited,
      faults_applied = g.counters.faults_applied,
      idle_expiries = g.counters.idle_expiries,
      relapses = g.counters.relapses,
      by_path = g.counters.by_path,
      connections = srv.stats.connections,
      active_connections = srv.stats.active,
      http_requests = srv.stats.requests,
      connection_errors = srv.stats.errors,
    },
    faults = #g.faults.queue,
    penalty = control.penalty(g, now),
    log_size = #g.log,
  }
end

local function body_of(req)
  if not req.body or req.body == "" then
    return {}
  end
  local v, err = json.decode(req.body)
  if v == nil then
    return nil, "invalid JSON body: " .. tostring(err)
  end
  if type(v) ~= "table" then
    return nil, "the body must be a JSON object or array"
  end
  return v
end

local function bad(msg)
  return response.error(400, msg)
end

local routes = {}

routes["GET /__mock/state"] = function(m)
  return response.json(200, control.state(m))
end

routes["POST /__mock/state"] = function(m, t)
  local s = t.state
  if s ~= nil and not gateway_mod.states[s] then
    return bad("state must be one of ready, unauthenticated, disconnected, competing, no_session")
  end
  local extra = {}
  for k, v in pairs(t) do
    if k ~= "state" then
      extra[k] = v
    end
  end
  local ok, err = control.apply_config(m, extra)
  if not ok then
    return bad(err)
  end
  if s then
    m.gateway:set_state(s)
  end
  return response.json(200, control.state(m))
end

routes["GET /__mock/config"] = function(m)
  return response.json(200, control.config(m))
end

routes["POST /__mock/config"] = function(m, t)
  local ok, err = control.apply_config(m, t)
  if not ok then
    return bad(err)
  end
  return response.json(200, control.config(m))
end

routes["GET /__mock/log"] = function(m)
  local list = json.array()
  for i, e in ipairs(m.gateway.log) do
    list[i] = e
  end
  return response.json(200, { requests = list })
end

local function clear_log(m)
  local n = #m.gateway.log
  m.gateway.log = {}
  return response.json(200, { cleared = n })
end
routes["DELETE /__mock/log"] = clear_log
routes["POST /__mock/log/clear"] = clear_log

routes["GET /__mock/fault"] = function(m)
  return response.json(200, { faults = m.gateway.faults:list() })
end

routes["POST /__mock/fault"] = function(m, t)
  local list = t
  if #t == 0 then
    list = { t }
  end
  -- validate all before adding any
  for i, spec in ipairs(list) do
    local ok, err = faults_mod.check(spec)
    if not ok then
      return bad(#list > 1 and string.format("fault %d: %s", i, err) or err)
    end
  end
  local added = json.array()
  for _, spec in ipairs(list) do
    added[#added + 1] = m.gateway.faults:add(spec)
  end
  return response.json(200, { added = added, pending = #m.gateway.faults.queue })
end

local function clear_faults(m)
  local n = #m.gateway.faults.queue
  m.gateway.faults:clear()
  return response.json(200, { cleared = n })
end
routes["DELETE /__mock/fault"] = clear_faults
routes["POST /__mock/fault/clear"] = clear_faults

-- Answers held by faults of kind "hold": GET lists them (the id of the fault holding each),
-- POST releases them (those of fault `id`, or all).
routes["GET /__mock/held"] = function(m)
  local ids = json.array()
  for i, tag in ipairs(m.server:held()) do
    ids[i] = tag
  end
  return response.json(200, { held = ids })
end

routes["POST /__mock/release"] = function(m, t)
  for k in pairs(t) do
    if k ~= "id" then
      return bad("unknown key for a release: " .. tostring(k))
    end
  end
  local id = type(t.id) == "number" and math.tointeger(t.id) or nil
  if t.id ~= nil and not id then
    return bad("id must be the id of a fault")
  end
  return response.json(200, { released = m.server:release(id) })
end

routes["POST /__mock/reset"] = function(m)
  m:reset()
  return response.json(200, control.state(m))
end

routes["GET /__mock/penalty"] = function(m)
  local g = m.gateway
  return response.json(200, { penalty = control.penalty(g, g.clock()) })
end

routes["POST /__mock/penalty"] = function(m, t)
  for k in pairs(t) do
    if k ~= "seconds" and k ~= "retry_after" and k ~= "extend" then
      return bad("unknown key for the penalty box: " .. tostring(k))
    end
  end
  local s, ra = t.seconds or 600, t.retry_after
  if not check("positive", s) then
    return bad("seconds must be a positive number")
  end
  if ra ~= nil and (type(ra) ~= "number" or ra ~= ra or ra < 0 or ra > 1e9 or ra % 1 ~= 0) then
    return bad("retry_after must be a whole number of seconds >= 0")
  end
  if t.extend ~= nil and type(t.extend) ~= "boolean" then
    return bad("extend must be a boolean")
  end
  local g = m.gateway
  g:start_penalty({ seconds = s, retry_after = ra and math.floor(ra), extend = t.extend })
  return response.json(200, { penalty = control.penalty(g, g.clock()) })
end

routes["DELETE /__mock/penalty"] = function(m)
  return response.json(200, { cleared = m.gateway:stop_penalty() })
end

routes["POST /__mock/login"] = function(m, t)
  local s = t.state or "ready"
  if s ~= "ready" and s ~= "unauthenticated" and s ~= "competing" then
    return bad("state must be ready, unauthenticated or competing")
  end
  m.gateway:login(s)
  return response.json(200, control.state(m))
end

routes["POST /__mock/shutdown"] = function(m)
  m.shutdown_requested = true
  local r = response.json(200, { stopping = true })
  r.close = true
  return r
end

local known = {}
for key in pairs(routes) do
  local method, path = key:match("^(%S+) (.*)$")
  known[path] = known[path] or {}
  table.insert(known[path], method)
end

-- Entry point for every request whose path starts with /__mock.
function control.handle(m, req)
  if req.path == "/__mock/echo" then
    return response.json(200, gateway_mod.describe_request(req))
  end
  local route = routes[req.method .. " " .. req.path]
  if not route then
    if known[req.path] then
      table.sort(known[req.path])
      return response.error(405, "Method Not Allowed", { { "Allow", table.concat(known[req.path], ", ") } })
    end
    return response.error(404, "unknown control endpoint: " .. req.path)
  end
  local t, err = body_of(req)
  if not t then
    return bad(err)
  end
  return route(m, t)
end

return control
