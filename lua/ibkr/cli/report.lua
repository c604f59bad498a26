-- What ibkr-session says about an outcome: exit codes of states and errors, the plain (JSON)
-- form of an error, one-line descriptions of status bodies and errors. Shared by the one-shot
-- commands and the keep-alive.

local ibkr = require("ibkr")
local kinds = require("ibkr.kinds")
local out = require("ibkr.cli.out")

local M = {}

M.EXIT = { ok = 0, not_ready = 1, unreachable = 2, login = 3, usage = 64 }
M.SIGNAL_EXIT = { INT = 130, TERM = 143, HUP = 129, QUIT = 131 }

-- Exit code of a session state (s:health()'s names): 0 ready, 2 down/tls, 3 no_session, else 1.
M.code_of_state = kinds.exit_code

-- State of a failed call's error, as s:health() says.
M.state_of_error = kinds.state

-- Exit code of a failed call.
M.code_of_error = kinds.exit

local function cut(s, max)
  s = tostring(s)
  if #s <= max then return s end
  return s:sub(1, max) .. "..."
end

-- The error as a plain table for a JSON line (message bounded).
function M.plain_error(err)
  local t = {}
  for _, k in ipairs{ "kind", "status", "method", "path", "retry_after", "hold", "refusals", "held",
                    "curl_code", "data", "state" } do
    t[k] = err[k]
  end
  t.message = err.message ~= nil and cut(err.message, out.MAX_TEXT) or nil
  return t
end

-- A text field of a status body, quoted and escaped: ` fail="..."`, or "".
local function text_field(st, k)
  local v = st[k]
  if type(v) ~= "string" or v == "" then return "" end
  return " " .. k .. "=" .. out.quoted(v)
end

-- "authenticated=true connected=true competing=false established=true fail="..." message="..."",
-- (without the `error` text when skip_error: the caller shows it already)
function M.describe_status(st, skip_error)
  if type(st) ~= "table" then return "answer: " .. out.text(out.json(st)) end
  local parts = {}
  for _, k in ipairs{ "authenticated", "connected", "competing", "established" } do
    if type(st[k]) == "boolean" then parts[#parts + 1] = k .. "=" .. tostring(st[k]) end
  end
  local line = table.concat(parts, " ") .. text_field(st, "fail") .. text_field(st, "message")
    .. (skip_error and "" or text_field(st, "error"))
  return (line:gsub("^ ", ""))
end

-- One line for a detail of s:health() or the keep-alive: a status table or an error.
function M.describe(detail)
  if ibkr.is_error(detail) then return out.text(tostring(detail), 2 * out.MAX_TEXT) end
  return M.describe_status(detail)
end

return M
