-- Fault injection: a queue of faults, each applying to the next `count` API requests that
-- match its path (relative to /v1/api, without the query string) and method, after letting
-- `after` of them pass. The first matching fault in the queue wins. Every fault also takes the
-- modifiers `delay` (seconds before the head), `chunked`, `close` (Connection: close) and
-- `headers` (extra response headers). The reference is docs/testing.md.
local json = require("ibkr.mock.json")
local response = require("ibkr.mock.response")
local http = require("ibkr.mock.net.http")

local faults = {}
faults.__index = faults

-- kind -> whether it wraps the normal response (state effects and pacing still apply)
faults.kinds = {
  delay = "wrap", delay_body = "wrap", hold = "wrap", drop = "wrap", chunked = "wrap", gzip = "wrap",
  truncated = "wrap", status = "replace", malformed = "replace", html = "replace",
  empty = "replace", huge = "replace", redirect = "replace", deep = "replace",
  invalid_utf8 = "replace", error_body = "replace", backend_timeout = "replace",
}

-- Keys every fault may carry, and the kind-specific parameters.
local COMMON = {
  kind = true, path = true, method = true, count = true, after = true, delay = true,
  chunked = true, close = true, headers = true, id = true,
}
local PARAMS = {
  delay = { seconds = true }, delay_body = { seconds = true }, hold = { seconds = true },
  drop = { when = true },
  status = { status = true, body = true, content_type = true }, huge = { bytes = true },
  redirect = { status = true, location = true }, deep = { depth = true },
  error_body = { error = true, status = true }, html = { status = true, title = true },
  backend_timeout = { seconds = true },
}

local function number_param(f, name, default, min, max)
  local v = f[name]
  if v == nil then
    v = default
  end
  if type(v) ~= "number" or v ~= v or v < min or v > max then
    return nil, string.format("%s must be a number in [%s, %s]", name, tostring(min), tostring(max))
  end
  f[name] = v
  return true
end

local function integer_param(f, name, default, min, max)
  local ok, err = number_param(f, name, default, min, max)
  if ok then
    f[name] = math.floor(f[name])
  end
  return ok, err
end

local function string_param(f, name)
  if f[name] ~= nil and (type(f[name]) ~= "string" or f[name]:find("[\r\n%z]")) then
    return nil, name .. " must be a string without CR, LF or NUL"
  end
  return true
end

local validators = {
  delay = function(f) return number_param(f, "seconds", 1, 0, 3600) end,
  delay_body = function(f) return number_param(f, "seconds", 1, 0, 3600) end,
  hold = function(f) return number_param(f, "seconds", 600, 0, 3600) end,
  backend_timeout = function(f) return number_param(f, "seconds", 10, 0, 3600) end,
  drop = function(f)
    f.when = f.when or "before"
    if f.when ~= "before" and f.when ~= "mid" then
      return nil, 'when must be "before" or "mid"'
    end
    return true
  end,
  status = function(f)
    local ok, err = integer_param(f, "status", 500, 100, 599)
    if not ok then
      return nil, err
    end
    if f.body ~= nil and type(f.body) ~= "string" then
      f.body = json.encode(f.body)
    end
    return string_param(f, "content_type")
  end,
  huge = function(f) return integer_param(f, "bytes", 16 * 1024 * 1024, 16, 2 ^ 40) end,
  redirect = function(f)
    local ok, err = integer_param(f, "status", 302, 300, 399)
    if not ok then
      return nil, err
    end
    return string_param(f, "location")
  end,
  deep = function(f) return integer_param(f, "depth", 100000, 1, 10000000) end,
  error_body = function(f)
    f.error = f.error or "failed to process request"
    if type(f.error) ~= "string" then
      return nil, "error must be a string"
    end
    return integer_param(f, "status", 200, 100, 599)
  end,
  html = function(f)
    local ok, err = integer_param(f, "status", 200, 100, 599)
    if not ok then
      return nil, err
    end
    f.title = f.title or "Client Portal Gateway"
    return string_param(f, "title")
  end,
}

-- A path that can never match is refused, saying why (a test would otherwise wait for a fault
-- that never comes).
local function check_path(path)
  if path == nil then
    return true
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    return nil, "path must be a string starting with /"
  end
  local rest = path:match("^/v1/api(/.*)$") or path:match("^/v1/portal(/.*)$")
  if rest or path == "/v1/api" then
    return nil, string.format('path is relative to /v1/api: use "%s", not "%s"', rest or "/", path)
  end
  if path:find("?", 1, true) or path:find("#", 1, true) then
    return nil, string.format('path is matched without its query string: use "%s", not "%s"',
      path:match("^[^?#]*"), path)
  end
  return true
end

local function check_headers(h)
  if h == nil then
    return true
  end
  if type(h) ~= "table" or (next(h) ~= nil and h[1] ~= nil) then
    return nil, "headers must be an object"
  end
  local function bad_value(v)
    return type(v) == "table" or tostring(v):find("[\r\n%z]") ~= nil
  end
  for k, v in pairs(h) do
    -- a list of values: one header line each (Set-Cookie twice, a repeated Vary...)
    local list = type(v) == "table" and next(v) ~= nil and #v > 0 and v or nil
    if list then
      for i, x in pairs(list) do
        if math.type(i) ~= "integer" or i < 1 or i > #list or bad_value(x) then list = nil; break end
      end
    end
    if type(k) ~= "string" or not http.is_token(k) or (not list and bad_value(v)) then
      return nil, "bad header " .. tostring(k)
    end
  end
  return true
end

-- The checks every fault gets, whatever its kind.
local function check_common(f)
  for k in pairs(f) do
    if not COMMON[k] and not (PARAMS[f.kind] or {})[k] then
      return nil, string.format("unknown key %q for a fault of kind %s", tostring(k), f.kind)
    end
  end
  local ok, err = check_path(f.path)
  if not ok then
    return nil, err
  end
  if f.method ~= nil then
    if type(f.method) ~= "string" or not http.is_token(f.method) then
      return nil, "method must be an HTTP method name"
    end
    f.method = f.method:upper()
  end
  for _, name in ipairs({ "chunked", "close" }) do
    if f[name] ~= nil and type(f[name]) ~= "boolean" then
      return nil, name .. " must be a boolean"
    end
  end
  ok, err = integer_param(f, "count", 1, 1, 1e9)
  if ok then
    ok, err = integer_param(f, "after", 0, 0, 1e9)
  end
  if ok and f.delay ~= nil then
    ok, err = number_param(f, "delay", 0, 0, 3600)
  end
  if not ok then
    return nil, err
  end
  return check_headers(f.headers)
end

function faults.new()
  return setmetatable({ queue = {}, next_id = 0 }, faults)
end

local function kind_names()
  local names = {}
  for k in pairs(faults.kinds) do
    names[#names + 1] = k
  end
  table.sort(names)
  return table.concat(names, ", ")
end

-- Checks a fault's JSON description. Returns a normalised copy or nil, message.
function faults.check(spec)
  if type(spec) ~= "table" then
    return nil, "a fault is a JSON object"
  end
  local f = {}
  for k, v in pairs(spec) do
    f[k] = v
  end
  if type(f.kind) ~= "string" or not faults.kinds[f.kind] then
    return nil, "kind must be one of: " .. kind_names()
  end
  local ok, err = check_common(f)
  if ok and validators[f.kind] then
    ok, err = validators[f.kind](f)
  end
  if not ok then
    return nil, err
  end
  f.id = nil
  return f
end

-- Adds a fault from its JSON description. Returns the stored fault or nil, message.
function faults:add(spec)
  local f, err = faults.check(spec)
  if not f then
    return nil, err
  end
  self.next_id = self.next_id + 1
  f.id = self.next_id
  self.queue[#self.queue + 1] = f
  return f
end

-- Takes one use of the first fault matching method and path (relative to /v1/api). A fault
-- still letting requests pass (`after`) counts this one and does not hide the faults behind it.
function faults:take(method, path)
  local i = 1
  while i <= #self.queue do
    local f = self.queue[i]
    if (f.path == nil or f.path == path) and (f.method == nil or f.method == method) then
      if f.after > 0 then
        f.after = f.after - 1
      else
        f.count = f.count - 1
        if f.count <= 0 then
          table.remove(self.queue, i)
        end
        return f
      end
    end
    i = i + 1
  end
end

function faults:list()
  local out = json.array()
  for _, f in ipairs(self.queue) do
    out[#out + 1] = f
  end
  return out
end

function faults:clear()
  self.queue = {}
end

local function huge_stream(bytes)
  local prefix, suffix = '{"data":"', '"}'
  local fill = bytes - #prefix - #suffix
  local block = string.rep("x", 65536)
  return {
    length = bytes,
    chunks = function()
      local left, started, finished = fill, false, false
      return function()
        if not started then
          started = true
          return prefix
        end
        if left > 0 then
          local n = math.min(left, #block)
          left = left - n
          return n == #block and block or block:sub(1, n)
        end
        if not finished then
          finished = true
          return suffix
        end
      end
    end,
  }
end

local function html_page(title)
  local t = title:gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;")
  return "<!DOCTYPE html><html><head><title>" .. t .. "</title></head><body><h1>" .. t
    .. "</h1><p>ibkr-mock-gateway</p></body></html>"
end

-- The kinds that replace the answer: kind -> function(f, ctx) -> response.
local replace = {
  status = function(f)
    local body = f.body
    if body == nil then
      body = json.encode({ error = http.reason(f.status) })
    end
    return response.raw(f.status, f.content_type or "application/json", body)
  end,
  malformed = function()
    return response.raw(200, "application/json", '{"authenticated":tru,"connected":}')
  end,
  html = function(f)
    return response.raw(f.status, "text/html; charset=utf-8", html_page(f.title))
  end,
  empty = function()
    return response.raw(200, "application/json", "")
  end,
  huge = function(f)
    local r = response.raw(200, "application/json", nil)
    r.stream = huge_stream(f.bytes)
    return r
  end,
  redirect = function(f, ctx)
    local loc = f.location or (ctx.root .. "/sso/Login?forwardTo=22&RL=1&ip2loc=on")
    return response.raw(f.status, "text/html; charset=utf-8",
      '<html><body><a href="' .. loc .. '">moved</a></body></html>', { { "Location", loc } })
  end,
  deep = function(f)
    return response.raw(200, "application/json", string.rep("[", f.depth) .. string.rep("]", f.depth))
  end,
  invalid_utf8 = function()
    return response.raw(200, "application/json", '{"message":"bad \255\254 bytes \195\40 here"}')
  end,
  error_body = function(f)
    return response.json(f.status, { error = f.error })
  end,
  -- The gateway's own answer when IBKR's backend is silent: 503, empty chunked body,
  -- Connection: close, after 10 s (reported in Voyz/ibeam issue #38).
  backend_timeout = function(f)
    local r = response.raw(503, nil, "", { { "x-response-time", math.floor(f.seconds * 1000) .. "ms" } })
    r.delay, r.chunked, r.close = f.seconds, true, true
    return r
  end,
}

-- The kinds that change the normal answer r.
local wrap = {
  delay = function(f, r) r.delay = f.seconds end,
  delay_body = function(f, r) r.pause_mid = f.seconds end,
  hold = function(f, r) r.hold = { tag = f.id, seconds = f.seconds } end,
  drop = function(f, r) r.drop = f.when end,
  chunked = function(_, r) r.chunked = true end,
  gzip = function(_, r)
    r.body = require("zlib").deflate(6, 31)(r.body or "", "finish")
    r.headers[#r.headers + 1] = { "Content-Encoding", "gzip" }
  end,
  truncated = function(_, r)
    r.body = (r.body or ""):sub(1, math.floor(#(r.body or "") / 2))
  end,
}

-- The modifiers every kind takes.
local function modify(f, r)
  if f.delay and not r.delay then
    r.delay = f.delay
  end
  if f.chunked then
    r.chunked = true
  end
  if f.close then
    r.close = true
  end
  local names = {}
  for k in pairs(f.headers or {}) do
    names[#names + 1] = k
  end
  table.sort(names)
  local function text(v)
    return math.type(v) == "float" and v % 1 == 0 and string.format("%d", v) or tostring(v)
  end
  for _, k in ipairs(names) do
    local v = f.headers[k]
    if type(v) == "table" then -- a list: replaces the answer's own lines of that name, one line each
      for i = #r.headers, 1, -1 do
        if r.headers[i][1]:lower() == k:lower() then table.remove(r.headers, i) end
      end
      for _, x in ipairs(v) do r.headers[#r.headers + 1] = { k, text(x) } end
    else
      v = text(v)
      local replaced = false
      for _, hv in ipairs(r.headers) do
        if hv[1]:lower() == k:lower() then
          hv[2], replaced = v, true
        end
      end
      if not replaced then
        r.headers[#r.headers + 1] = { k, v }
      end
    end
  end
  return r
end

-- Builds the response for fault f. normal() produces the regular response. ctx.root is the
-- server root URL (for the default redirect target).
function faults.apply(f, normal, ctx)
  local r
  if replace[f.kind] then
    r = replace[f.kind](f, ctx)
  else
    r = normal()
    wrap[f.kind](f, r)
  end
  return modify(f, r)
end

return faults
