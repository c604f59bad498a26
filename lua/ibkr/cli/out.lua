-- ibkr-session's output: every text that came from the gateway becomes one bounded, printable
-- line, and JSON lines that are valid UTF-8 and carry no control byte. ibkr-session writes no
-- escape codes of its own at all (no colours), so NO_COLOR and non-terminals need nothing.

local core = require("ibkr.core")

local M = {}

M.MAX_TEXT = 300 -- bytes of one gateway text in a human line (like error bodies, cut)

-- Every gateway text goes through the core's sanitiser (one copy of the rules: error.c): control
-- bytes (C0, DEL), C1 controls, line/paragraph separators, bidi overrides and bytes that are not
-- UTF-8 become visible escapes (\r, \n, \t, \xNN, \u{XXXX}), so nothing prints as two lines.
function M.printable(s)
  return core.printable(tostring(s), math.maxinteger)
end

-- One gateway text for a human line: printable and at most `max` (MAX_TEXT) bytes, cut on a
-- character boundary with "…" added.
function M.text(s, max)
  return core.printable(tostring(s), max or M.MAX_TEXT)
end

-- A gateway text as the value of a `name="value"` field: backslashes and quotes escaped first,
-- so the text can neither end the field early nor add a field of its own.
function M.quoted(s, max)
  return '"' .. M.text((tostring(s):gsub('[\\"]', "\\%0")), max) .. '"'
end

------------------------------------------------------------------------------------------------
-- JSON

-- A copy of v fit for a JSON line: strings that are not UTF-8 get U+FFFD for each bad byte,
-- ibkr.null stays null, arrays stay arrays, error objects become plain tables, cycles are cut.
local function clean(v, seen)
  local t = type(v)
  if t == "string" then
    if utf8.len(v) then return v end
    return (v:gsub("[\128-\255]+", function(run)
      local out, i = {}, 1
      while i <= #run do
        local c = run:byte(i)
        local len = c >= 0xF0 and 4 or c >= 0xE0 and 3 or c >= 0xC2 and 2 or 0
        local ch = len > 0 and run:sub(i, i + len - 1)
        if ch and #ch == len and utf8.len(ch) == 1 then
          out[#out + 1] = ch
          i = i + len
        else
          out[#out + 1] = "\239\191\189"
          i = i + 1
        end
      end
      return table.concat(out)
    end))
  elseif t == "table" then
    if seen[v] then return nil end
    seen[v] = true
    local c = {}
    for k, x in pairs(v) do
      if type(k) == "string" or math.type(k) == "integer" then c[k] = clean(x, seen) end
    end
    seen[v] = nil
    if getmetatable(v) == core.array_mt then setmetatable(c, core.array_mt) end
    return c
  elseif t == "userdata" then
    return core.null -- ibkr.null (a light userdata)
  elseif t == "number" then
    -- a number beyond a double's range (the gateway sent 1e999) has no JSON form: shown as text
    if v ~= v then return "NaN" end
    if v == math.huge or v == -math.huge then return v > 0 and "Infinity" or "-Infinity" end
    return v
  elseif t == "boolean" then
    return v
  end
  return nil
end

-- Unicode escapes for what JSON allows raw but a terminal may obey: DEL and the C1 controls.
local RAW = {
  ["\127"] = "\\u007f",
}
for cp = 0x80, 0x9f do RAW[utf8.char(cp)] = string.format("\\u%04x", cp) end

-- One JSON document on one line, numbers exact (the core's encoder: json.c; lua-cjson would cut
-- them to 14 digits). A value the encoder refuses (a sparse array left by a cut cycle) still gives
-- one valid JSON line, naming the problem.
function M.json(v)
  local ok, s = pcall(core.encode, clean(v, {}))
  if not ok then s = core.encode{ error = "cannot show this value as JSON: " .. tostring(s) } end
  return (s:gsub("\127", RAW):gsub("\194[\128-\159]", RAW))
end

M.null = core.null

return M
