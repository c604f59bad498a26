-- Tracing a session's exchanges: one event per exchange (one attempt of a call), given to the
-- session's trace function (ibkr.new{ trace = fn }) and, when $IBKR_TRACE was set at ibkr.new,
-- printed as one line on stderr. The reference is docs/ibkr.md, "Tracing".
--
--   trace.new{ fn =, env =, body =, base =, out = } -> tracer, or nil when there is nothing to do
--   tracer:exchange(method, path, copts, attempt, res, second, x) -- one exchange happened
--   tracer:held(method, path, copts, attempt, err, x)  -- a call refused without sending
--   tracer.busy   true while the trace function runs (ibkr/call.lua refuses calls made from it)
--   tracer.errors, tracer.last_error   failures of the trace function so far, the last one
--
-- Never in an event: request or response headers (Authorization, cookies, OAuth parameters), the
-- value of a query parameter whose name looks like a credential, the credentials of the base URL,
-- and — unless the session asked (trace_body = true) — any body. The token requests of an OAuth
-- session are traced without their bodies even then.
--
-- The trace function runs between exchanges, inside the call, in a coroutine of its own: a yield
-- cannot reach the host driving a cooperative call, and an error cannot end the call. Either is
-- reported — the first one of a session as one line on stderr, all of them in s:stats()
-- (trace_errors, trace_error) — and the call goes on.

local check = require("ibkr.check")

local M = {}

M.REDACTED = "<redacted>"
-- Query parameter names (compared in lower case, as substrings) whose values are never traced.
M.SECRET_NAMES = { "token", "secret", "sig", "pass", "key", "auth", "assertion", "cookie",
  "credential", "jwt", "nonce", "session" }

local function secret(name)
  name = tostring(name):lower()
  for _, s in ipairs(M.SECRET_NAMES) do
    if name:find(s, 1, true) then return true end
  end
  return false
end

-- The query parameters of a call, from the query string written in `path` and the `query`
-- table, as a new table name -> value (a list for a repeated name), credential-like values
-- replaced by M.REDACTED; nil when there are none.
local function query_of(qs, query)
  local q
  local function add(k, v)
    if secret(k) then v = M.REDACTED end
    q = q or {}
    local had = q[k]
    if had == nil then q[k] = v
    elseif type(had) == "table" then had[#had + 1] = v
    else q[k] = { had, v } end
  end
  if qs then
    for pair in qs:gmatch("[^&]+") do
      local k, v = pair:match("^([^=]*)=?(.*)$")
      add(k, v)
    end
  end
  for k, v in pairs(query or {}) do
    if type(v) == "table" then
      local list = {}
      for i, x in ipairs(v) do list[i] = secret(k) and M.REDACTED or x end
      if q and q[k] ~= nil then for _, x in ipairs(list) do add(k, x) end
      else q = q or {}; q[k] = list end
    else
      add(k, v)
    end
  end
  return q
end
M.query_of = query_of

-- An event's common part: the request as traced.
-- x: what the caller knows of the exchange ({ token =, base =, seconds =, ... }). Every field
-- an event may get is named in the constructor, so the table is made at its size once.
local function request_event(self, method, path, copts, attempt, x)
  local at = path:find("?", 1, true)
  local query = copts and copts.query
  local token = x.token
  local ev = {
    method = method, path = at and path:sub(1, at - 1) or path, attempt = attempt,
    base = x.base or self.base, token = token,
    query = (at or query) and query_of(at and path:sub(at + 1), query) or nil,
    seconds = x.seconds, bytes = x.bytes, retry = x.retry, paced = x.paced,
    status = nil, kind = nil, message = nil, retry_after = nil, held = nil, data = nil, body = nil,
    request_body = not token and self.body and copts and copts.body or nil, -- never a token request's
  }
  return ev
end

-- The line IBKR_TRACE prints for ev.
local function line(ev)
  local q = {}
  if ev.query then
    local names = {}
    for k in pairs(ev.query) do names[#names + 1] = tostring(k) end
    table.sort(names)
    for _, k in ipairs(names) do
      local v = ev.query[k]
      if type(v) == "table" then
        for _, x in ipairs(v) do q[#q + 1] = k .. "=" .. tostring(x) end
      else
        q[#q + 1] = k .. "=" .. tostring(v)
      end
    end
  end
  local parts = { "ibkr trace:", ev.method, ev.path .. (#q > 0 and ("?" .. table.concat(q, "&")) or "") }
  local function add(k, v, fmt)
    if v ~= nil then parts[#parts + 1] = k .. "=" .. (fmt and string.format(fmt, v) or tostring(v)) end
  end
  add("status", ev.status)
  add("kind", ev.kind)
  add("held", ev.held)
  add("seconds", ev.seconds, "%.6f")
  add("bytes", ev.bytes)
  add("attempt", ev.attempt)
  add("paced", ev.paced, "%.3f")
  add("retry", ev.retry, "%.3f")
  add("retry_after", ev.retry_after, "%g")
  add("token", ev.token)
  add("base", ev.base)
  if ev.message then parts[#parts + 1] = "message=" .. string.format("%q", ev.message):gsub("\\\n", "\\n") end
  return (table.concat(parts, " "):gsub("[%c]", "?"))
end
M.line = line

local Tracer = {}
Tracer.__index = Tracer

local DONE = {} -- what the runner yields when the trace function returned

-- A coroutine that runs the trace function once per resume; it ends when the function raises.
local function runner(fn)
  return coroutine.create(function(ev)
    while true do
      fn(ev)
      ev = coroutine.yield(DONE)
    end
  end)
end

function Tracer:failed(what)
  self.errors = self.errors + 1
  self.last_error = what
  if self.errors == 1 and self.out then
    pcall(self.out.write, self.out, "ibkr: the session's trace function ", what,
      " (reported once; s:stats().trace_errors counts every failure)\n")
  end
end

-- Runs the trace function with ev: never raises, never yields to the caller.
function Tracer:call(ev)
  local co = self.co
  if co == nil then
    co = runner(self.fn)
    self.co = co
  end
  self.busy = true
  local ok, r = coroutine.resume(co, ev)
  self.busy = false
  if not ok then
    self.co = nil
    self:failed("raised: " .. check.text(r))
  elseif r ~= DONE then
    self.co = nil
    coroutine.close(co)
    self:failed("yielded (it runs between exchanges and must return at once)")
  end
end

function Tracer:emit(ev)
  if self.print then
    pcall(self.print.write, self.print, line(ev), "\n")
  end
  if self.fn then self:call(ev) end
end

-- One exchange: res (success) with `second` its meta, or nil with `second` the error; x: what
-- the caller measured ({ seconds =, bytes =, retry =, paced =, token =, base = }).
function Tracer:exchange(method, path, copts, attempt, res, second, x)
  local ev = request_event(self, method, path, copts, attempt, x)
  if res ~= nil then
    ev.status = second and second.status
    if self.body and not ev.token then ev.data = res end
  else
    local err = second
    ev.kind, ev.status, ev.message, ev.retry_after = err.kind, err.status, err.message, err.retry_after
    if ev.bytes == nil and type(err.body) == "string" then ev.bytes = #err.body end
    if self.body and not ev.token then ev.body, ev.data = err.body, err.data end
  end
  self:emit(ev)
end

-- A call refused without sending anything (the client's pacing, a hold): kind "rate_limited".
function Tracer:held(method, path, copts, attempt, err, x)
  local ev = request_event(self, method, path, copts, attempt, x)
  ev.kind, ev.held, ev.retry_after, ev.message = err.kind, err.held or "limits", err.retry_after,
    err.message
  ev.seconds, ev.bytes, ev.paced = 0, 0, nil
  self:emit(ev)
end

-- new{ fn = the trace function or nil, env = $IBKR_TRACE's value or nil, body = trace bodies,
--      base = the base URL without credentials, out = where lines go (default io.stderr) }
-- IBKR_TRACE prints unless it is unset, empty or "0".
function M.new(o)
  local printing = o.env ~= nil and o.env ~= "" and o.env ~= "0"
  if not o.fn and not printing then return nil end
  local out = o.out or io.stderr
  return setmetatable({
    fn = o.fn, print = printing and out or nil, out = out, body = o.body == true, base = o.base,
    busy = false, errors = 0, last_error = nil, co = nil,
  }, Tracer)
end

return M
