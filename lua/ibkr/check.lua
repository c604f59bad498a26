-- Checking what a caller passed: option tables, method calls, and raising a programmer error at
-- the caller's line (file:line of the user's call), never at a line of the library.
--
-- check.options(spec, value, fname [, level]) -> the table (an empty one for nil), or raises
--   spec    option name -> what it must be (check.TYPES): "string", "boolean", "table",
--           "function", "number>0" / "number>=0" (finite), "integer>0" / "integer>=0" (finite,
--           integral), or a function(v) returning nil when v is right, else what it must be
--           ("a table or a string")
--   value   the caller's options: nil or a table
--   fname   the name the caller knows the function by ("ibkr.new", "s:keepalive")
--   level   as error()'s level, counted from the function calling check.options (default 2:
--           its caller)
-- check.raise(msg, level) -> error(msg) at the first frame, from the function calling raise up,
--   whose source is not a file of this library: the caller's line. `level` (where the caller
--   expects that frame) is not needed for it: library functions that tail-call or wrap each other
--   (a tail call removes a frame) can shift neither the position onto a line of ours nor past the
--   caller.
-- check.method(self, mt, name) -> raises "call it as s:name(...)" unless self has metatable mt.
-- check.text(v) -> what a value a user's function raised says, as text: never raises, even for a
--   value whose __tostring raises, yields or returns no string.
--
-- Messages: "<fname>: unknown option 'intervall' (did you mean 'interval'?)",
-- "<fname>: option 'timeout' must be a finite number > 0 (got -1)",
-- "<fname>: options must be a table (got string)".

local M = {}

-- The directory of this file: frames whose source lies below it are the library's own.
local LIB = ((debug.getinfo(1, "S").source or ""):match("^@(.*/)[^/]*$"))

local function ours(info)
  if not LIB or info.what == "C" then return false end
  return info.source:sub(1, #LIB + 1) == "@" .. LIB
end

function M.raise(msg, level) -- luacheck: ignore level
  -- From the raising function up, whatever `level` says: a tail call in the library (a method
  -- wrapper, a helper) removes a frame, and a level counted past it would land above the caller.
  local l = 2 -- in this function's numbering (1 = raise itself)
  while true do
    local info = debug.getinfo(l, "S")
    if not info or not ours(info) then break end
    l = l + 1
  end
  error(msg, l)
end

local function finite(v) return v == v and v ~= math.huge and v ~= -math.huge end
local function integral(v)
  return math.type(v) == "integer" or (math.type(v) == "float" and finite(v) and v == math.floor(v))
end

-- name -> function(v) returning nil when v is right, else what it must be
M.TYPES = {
  ["number>0"] = function(v)
    if type(v) ~= "number" or not finite(v) or v <= 0 then return "a finite number > 0" end
  end,
  ["number>=0"] = function(v)
    if type(v) ~= "number" or not finite(v) or v < 0 then return "a finite number >= 0" end
  end,
  ["integer>0"] = function(v)
    if not integral(v) or v <= 0 then return "a whole number > 0" end
  end,
  ["integer>=0"] = function(v)
    if not integral(v) or v < 0 then return "a whole number >= 0" end
  end,
}
for _, t in ipairs{ "string", "boolean", "table", "function" } do
  M.TYPES[t] = function(v) if type(v) ~= t then return "a " .. t end end
end

-- Levenshtein distance of two short names, for "did you mean".
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

-- The known name closest to `name` (at most 2 edits away), or nil.
local function nearest(spec, name)
  if type(name) ~= "string" or #name > 64 then return nil end
  local best, bd
  for k in pairs(spec) do
    local d = distance(name, k)
    if d <= 2 and (not bd or d < bd or (d == bd and k < best)) then best, bd = k, d end
  end
  return best
end

local function shown(v)
  if type(v) == "number" or type(v) == "boolean" then return tostring(v) end
  return type(v)
end

function M.options(spec, value, fname, level)
  level = (level or 2) + 1 -- in this function's numbering
  if value == nil then return {} end
  if type(value) ~= "table" then
    M.raise(string.format("%s: options must be a table (got %s)", fname, type(value)), level)
  end
  for k, v in pairs(value) do
    local want = spec[k]
    if want == nil then
      local near = nearest(spec, k)
      M.raise(string.format("%s: unknown option '%s'%s", fname, tostring(k),
        near and (" (did you mean '" .. near .. "'?)") or ""), level)
    end
    local test = type(want) == "function" and want or M.TYPES[want]
    local bad = test(v)
    if bad then
      M.raise(string.format("%s: option '%s' must be %s (got %s)", fname, k, bad, shown(v)), level)
    end
  end
  return value
end

function M.text(v)
  if type(v) == "string" then return v end
  local co = coroutine.create(tostring) -- a coroutine of its own: a yield stays in it
  local ok, msg = coroutine.resume(co, v)
  if ok and coroutine.status(co) == "dead" and type(msg) == "string" then return msg end
  coroutine.close(co)
  return "a " .. type(v) .. " value that cannot be shown"
end

function M.method(self, mt, name)
  if getmetatable(self) ~= mt then
    M.raise(string.format("ibkr: %s is a method: call it as s:%s(...), not s.%s(...)", name, name, name), 2)
  end
end

return M
