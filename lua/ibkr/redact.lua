-- Redaction: the secrets a signed session holds never show in what it hands out — the errors its
-- calls return (message, body, data, hint, cause) and its trace events — whatever an endpoint
-- echoed back. One place: ibkr/call.lua passes every error and trace event of a session with a
-- signer through M.error / M.value, with the signer's :secrets() (ibkr/oauth.lua,
-- ibkr/oauth2.lua: every secret it holds or held lately).
--
--   M.text(text, secrets) -> text with each secret (a string of 8 bytes or more), anything shaped
--                            like a JWT (three base64url parts, 40 bytes or more) and the token of
--                            any "Bearer <token>" (16 bytes or more) replaced by M.MARK
--   M.value(v, secrets)   -> v with every string in it redacted (tables copied, keys too)
--   M.error(err, secrets) -> err (an ibkr.core error) redacted in place, and its causes; returns err

local core = require("ibkr.core")

local M = {}

M.MARK = "[redacted]"
local DEPTH = 16 -- tables nested deeper than this are replaced whole

local function jwt(m) return #m >= 40 and M.MARK or m end
local function bearer(word, tok) return #tok >= 16 and word .. M.MARK or nil end

function M.text(text, secrets)
  text = tostring(text)
  for _, s in ipairs(secrets or {}) do
    if type(s) == "string" and #s >= 8 then
      local i = text:find(s, 1, true)
      while i do
        text = text:sub(1, i - 1) .. M.MARK .. text:sub(i + #s)
        i = text:find(s, i + #M.MARK, true)
      end
    end
  end
  text = text:gsub("([Bb][Ee][Aa][Rr][Ee][Rr]%s+)([%w%-%._~%+/]+=*)", bearer)
  return (text:gsub("[%w%-_]+%.[%w%-_]+%.[%w%-_]+", jwt))
end

local function value(v, secrets, depth, seen)
  local t = type(v)
  if t == "string" then return M.text(v, secrets) end
  if t ~= "table" then return v end
  if seen[v] then return seen[v] end
  if depth > DEPTH then return M.MARK end
  local out = {}
  seen[v] = out
  for k, x in pairs(v) do
    out[value(k, secrets, depth + 1, seen)] = value(x, secrets, depth + 1, seen)
  end
  return setmetatable(out, getmetatable(v))
end

function M.value(v, secrets)
  return value(v, secrets, 1, {})
end

local TEXTS = { "message", "hint", "body" }

function M.error(err, secrets, depth)
  depth = depth or 1
  if type(err) ~= "table" or depth > DEPTH then return err end
  for _, k in ipairs(TEXTS) do
    local v = rawget(err, k)
    if type(v) == "string" then
      local r = M.text(v, secrets)
      if r ~= v then rawset(err, k, k == "message" and core.printable(r) or r) end
    end
  end
  local data = rawget(err, "data")
  if type(data) == "table" or type(data) == "string" then rawset(err, "data", M.value(data, secrets)) end
  M.error(rawget(err, "cause"), secrets, depth + 1)
  return err
end

return M
