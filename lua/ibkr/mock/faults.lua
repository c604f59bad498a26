-- Fault injection: a queue of faults, each applying to the next `count` API requests that
-- match its path (relative to /v1/api) and method. The first matching fault in the queue wins.
local json = require("ibkr.mock.json")
local response = require("ibkr.mock.response")
local gzip = require("ibkr.mock.gzip")

local faults = {}
faults.__index = faults

-- kind -> whether it wraps the normal response (state effects and pacing still apply)
faults.kinds = {
  delay = "wrap", delay_body = "wrap", drop = "wrap", chunked = "wrap", gzip = "wrap",
  truncated = "wrap", status = "replace", malformed = "replace", html = "replace",
  empty = "replace", huge = "replace", redirect = "replace", deep = "replace",
  invalid_utf8 = "replace", error_body = "replace",
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

local validators = {
  delay = function(f) return number_param(f, "seconds", 1, 0, 3600) end,
  delay_body = function(f) return number_param(f, "seconds", 1, 0, 3600) end,
  drop = function(f)
    f.when = f.when or "before"
    if f.when ~= "before" and f.when ~= "mid" then
      return nil, 'when must be "before" or "mid"'
    end
    return true
  end,
  status = function(f)
    local ok, err = number_param(f, "status", 500, 100, 599)
    if not ok then
      return nil, err
    end
    f.status = math.floor(f.status)
    if f.body ~= nil and type(f.body) ~= "string" then
      f.body = json.encode(f.body)
    end
    if f.headers ~= nil and type(f.headers) ~= "table" then
      return nil, "headers must be an object"
    end
    if f.content_type ~= nil and type(f.content_type) ~= "string" then
      return nil, "content_type must be a string"
    end
    for k, v in pairs(f.headers or {}) do
      if type(k) ~= "string" or tostring(v):find("[\r\n%z]") or k:find("[\r\n%z:]") then
        return nil, "bad header " .. tostring(k)
      end
    end
    return true
  end,
  huge = function(f)
    local ok, err = number_param(f, "bytes", 16 * 1024 * 1024, 16, 2 ^ 40)
    f.bytes = ok and math.floor(f.bytes) or nil
    return ok, err
  end,
  redirect = function(f)
    local ok, err = number_param(f, "status", 302, 300, 399)
    if not ok then
      return nil, err
    end
    if f.location ~= nil and (type(f.location) ~= "string" or f.location:find("[\r\n%z]")) then
      return nil, "location must be a string"
    end
    return true
  end,
  deep = function(f)
    local ok, err = number_param(f, "depth", 100000, 1, 10000000)
    f.depth = ok and math.floor(f.depth) or nil
    return ok, err
  end,
  error_body = function(f)
    f.error = f.error or "failed to process request"
    if type(f.error) ~= "string" then
      return nil, "error must be a string"
    end
    return true
  end,
}

function faults.new()
  return setmetatable({ queue = {}, next_id = 0 }, faults)
end

-- Adds a fault from its JSON description. Returns the stored fault or nil, message.
function faults:add(spec)
  if type(spec) ~= "table" then
    return nil, "a fault is a JSON object"
  end
  local f = {}
  for k, v in pairs(spec) do
    f[k] = v
  end
  if type(f.kind) ~= "string" or not faults.kinds[f.kind] then
    local names = {}
    for k in pairs(faults.kinds) do
      names[#names + 1] = k
    end
    table.sort(names)
    return nil, "kind must be one of: " .. table.concat(names, ", ")
  end
  if f.path ~= nil and (type(f.path) ~= "string" or f.path:sub(1, 1) ~= "/") then
    return nil, "path must be a string starting with /"
  end
  if f.method ~= nil then
    if type(f.method) ~= "string" then
      return nil, "method must be a string"
    end
    f.method = f.method:upper()
  end
  local ok, err = number_param(f, "count", 1, 1, 1e9)
  if not ok then
    return nil, err
  end
  f.count = math.floor(f.count)
  local v = validators[f.kind]
  if v then
    ok, err = v(f)
    if not ok then
      return nil, err
    end
  end
  self.next_id = self.next_id + 1
  f.id = self.next_id
  self.queue[#self.queue + 1] = f
  return f
end

-- Takes one use of the first fault matching method and path (relative to /v1/api).
function faults:take(method, path)
  for i, f in ipairs(self.queue) do
    if (f.path == nil or f.path == path) and (f.method == nil or f.method == method) then
      f.count = f.count - 1
      if f.count <= 0 then
        table.remove(self.queue, i)
      end
      return f
    end
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

local HTML = "<!DOCTYPE html><html><head><title>Client Portal Gateway</title></head>"
  .. "<body><h1>Client login</h1><p>Please log in.</p></body></html>"

-- Builds the response for fault f. normal() produces the regular response. ctx.root is the
-- server root URL (for the default redirect target).
function faults.apply(f, normal, ctx)
  local kind = f.kind
  if kind == "status" then
    local h = {}
    local ctype = f.content_type or "application/json"
    for k, v in pairs(f.headers or {}) do
      if k:lower() == "content-type" then
        ctype = tostring(v)
      else
        h[#h + 1] = { k, tostring(v) }
      end
    end
    table.sort(h, function(a, b) return a[1] < b[1] end)
    local body = f.body
    if body == nil then
      body = json.encode({ error = require("ibkr.mock.http").reason(f.status) })
    end
    return response.raw(f.status, ctype, body, h)
  elseif kind == "malformed" then
    return response.raw(200, "application/json", '{"authenticated":tru,"connected":}')
  elseif kind == "html" then
    return response.raw(200, "text/html; charset=utf-8", HTML)
  elseif kind == "empty" then
    return response.raw(200, "application/json", "")
  elseif kind == "huge" then
    local r = response.raw(200, "application/json", nil)
    r.stream = huge_stream(f.bytes)
    return r
  elseif kind == "redirect" then
    local loc = f.location or (ctx.root .. "/sso/Login?forwardTo=22&RL=1&ip2loc=on")
    return response.raw(f.status, "text/html; charset=utf-8",
      '<html><body><a href="' .. loc .. '">moved</a></body></html>', { { "Location", loc } })
  elseif kind == "deep" then
    return response.raw(200, "application/json", string.rep("[", f.depth) .. string.rep("]", f.depth))
  elseif kind == "invalid_utf8" then
    return response.raw(200, "application/json", '{"message":"bad \255\254 bytes \195\40 here"}')
  elseif kind == "error_body" then
    return response.json(200, { error = f.error })
  end
  local r = normal()
  if kind == "delay" then
    r.delay = f.seconds
  elseif kind == "delay_body" then
    r.pause_mid = f.seconds
  elseif kind == "drop" then
    r.drop = f.when
  elseif kind == "chunked" then
    r.chunked = true
  elseif kind == "gzip" then
    r.body = gzip.compress(r.body or "")
    r.headers[#r.headers + 1] = { "Content-Encoding", "gzip" }
  elseif kind == "truncated" then
    r.body = (r.body or ""):sub(1, math.floor(#(r.body or "") / 2))
  end
  return r
end

return faults
