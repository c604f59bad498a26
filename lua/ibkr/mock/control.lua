-- The control API under /__mock/ (at the server root): JSON in, JSON out; never logged,
-- never paced, never subject to faults.
local json = require("ibkr.mock.json")
local response = require("ibkr.mock.response")
local gateway_mod = require("ibkr.mock.gateway")
local faults_mod = require("ibkr.mock.faults")
local ws = require("ibkr.mock.net.ws")

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
local push_keys = { -- the websocket (ibkr.mock.push)
  ws_heartbeat = "positive", ws_greeting_delay = "nonnegative", ws_max_message = "positive",
  ws_max_queue = "positive", ws_session_timeout = "positive", ws_max_clients = "positive",
  ws_push_recovery = "boolean", ws_quiet_expiry = "boolean", ws_log_limit = "positive",
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
  for k in pairs(push_keys) do
    c[k] = m.push.config[k]
  end
  c.verbose = m.verbose and true or false
  return c
end

-- The kind of a setting ("boolean", "positive", "nonnegative"), nil for an unknown name.
function control.setting_kind(k)
  return gateway_keys[k] or server_keys[k] or push_keys[k] or (k == "verbose" and "boolean") or nil
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

-- Splits checked settings into the gateway's, the server's and the websocket's.
function control.split_config(t)
  local g, srv, p = {}, {}, {}
  for k, v in pairs(t) do
    if gateway_keys[k] then
      g[k] = v
    elseif server_keys[k] then
      srv[k] = v
    elseif push_keys[k] then
      p[k] = v
    end
  end
  return g, srv, p
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
    elseif push_keys[k] then
      m.push.config[k] = v
    else
      m:set_verbose(v)
    end
  end
  m.push:wake_all() -- websocket connections plan with the new heartbeat, idle timeout...
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
      ws_clients = m.push.nclients,
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

-- A 200 answer { [key] = entries } with entries as a JSON array (an empty one too).
local function listing(key, entries)
  local list = json.array()
  for i, e in ipairs(entries) do
    list[i] = e
  end
  return response.json(200, { [key] = list })
end

routes["GET /__mock/log"] = function(m)
  return listing("requests", m.gateway.log)
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

---------------------------------------------------------------------------------------------
-- The websocket (ibkr.mock.push)

-- Checks the keys of a body: allowed is a set of names. Returns nil or the refusal.
local function only(t, allowed)
  for k in pairs(t) do
    if not allowed[k] then
      return bad("unknown key: " .. tostring(k))
    end
  end
end

-- A whole number from JSON (lua-cjson gives floats), or nil.
local function whole(v)
  return type(v) == "number" and math.tointeger(v) or nil
end

local function conn_of(t)
  if t.conn == nil then
    return false
  end
  return whole(t.conn), "conn must be an integer (a connection number from GET /__mock/ws)"
end

routes["GET /__mock/ws"] = function(m)
  return response.json(200, m.push:view())
end

routes["POST /__mock/ws/drop"] = function(m, t)
  local refused = only(t, { code = true, reason = true, conn = true })
  if refused then
    return refused
  end
  local code = whole(t.code)
  if t.code ~= nil and not ws.valid_close_code(code) then
    return bad("code must be a close code a server may send (1000-1003, 1007-1014, 3000-4999)")
  end
  if t.reason ~= nil and (type(t.reason) ~= "string" or #t.reason > 123 or not utf8.len(t.reason)) then
    return bad("reason must be a UTF-8 string of at most 123 bytes")
  end
  if t.reason and not t.code then
    return bad("a reason needs a code")
  end
  local conn, err = conn_of(t)
  if conn == nil then
    return bad(err)
  end
  return response.json(200, { dropped = m.push:drop(code, t.reason, conn or nil) })
end

local function switch(key, set, answer)
  return function(m, t)
    local refused = only(t, { [key] = true })
    if refused then
      return refused
    end
    if type(t[key]) ~= "boolean" then
      return bad(key .. " must be true or false")
    end
    set(m.push, t[key])
    return response.json(200, { [answer] = t[key] })
  end
end
routes["POST /__mock/ws/heartbeats"] = switch("enabled", function(p, v) p:set_heartbeats(v) end, "heartbeats")
routes["POST /__mock/ws/freeze"] = switch("frozen", function(p, v) p:freeze(v) end, "frozen")

-- What POST /__mock/ws/push sends: { text = } | { raw = } | { ping = }, or nil and why.
local function push_what(t)
  local n = 0
  for _, k in ipairs({ "message", "text", "raw_hex", "ping" }) do
    if t[k] ~= nil then
      n = n + 1
    end
  end
  if n ~= 1 then
    return nil, "give exactly one of message (any JSON value), text, raw_hex, ping"
  end
  local what
  if t.message ~= nil then
    what = { text = json.encode(t.message) }
  elseif t.text ~= nil then
    what = type(t.text) == "string" and utf8.len(t.text) and { text = t.text }
  elseif t.raw_hex ~= nil then
    local hex = type(t.raw_hex) == "string" and #t.raw_hex % 2 == 0 and t.raw_hex:find("^%x*$") and t.raw_hex
    what = hex and { raw = hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end) }
  else
    what = type(t.ping) == "string" and #t.ping <= 125 and { ping = t.ping }
  end
  if not what then
    return nil, "text must be UTF-8, raw_hex an even number of hex digits, ping at most 125 bytes"
  end
  return what
end

routes["POST /__mock/ws/push"] = function(m, t)
  local refused = only(t, { message = true, text = true, raw_hex = true, ping = true, conn = true,
    ["repeat"] = true })
  if refused then
    return refused
  end
  local what, err = push_what(t)
  local conn, cerr = conn_of(t)
  local times = whole(t["repeat"] or 1)
  if not times or times < 1 or times > 100000 then
    err = err or "repeat must be an integer in [1, 100000]"
  end
  if not what or conn == nil or err then
    return bad(err or cerr)
  end
  local sent = 0
  for _ = 1, times do
    sent = sent + m.push:inject(what, conn or nil)
  end
  return response.json(200, { sent = sent })
end

routes["POST /__mock/ws/greet"] = function(m)
  return response.json(200, { greeted = m.push:greet_now() })
end

routes["GET /__mock/ws/messages"] = function(m)
  return listing("messages", m.push.log)
end

routes["DELETE /__mock/ws/messages"] = function(m)
  return response.json(200, { cleared = m.push:clear_log() })
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
