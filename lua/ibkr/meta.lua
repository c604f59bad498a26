-- The meta of a successful call, its second value: { status = 200, headers = {...} }
-- (docs/ibkr.md, "Session calls"). `headers` is built on first use from the final response's
-- header block, which the core hands over as it came (core.parse_headers decodes it): a call
-- whose meta is never read pays for one small table, not for a table of headers.
--   meta.new(status, head) -> meta      head: the header block (a string) or nil

local core = require("ibkr.core")

local setmetatable, rawget, rawset = setmetatable, rawget, rawset

local M = {}

local HEAD = {} -- the key of the raw header block, until `headers` is built from it

local function headers(m)
  local h = core.parse_headers(rawget(m, HEAD) or "")
  rawset(m, HEAD, nil)
  rawset(m, "headers", h)
  return h
end

local META = {
  __name = "ibkr.meta",
  __index = function(m, k)
    if k == "headers" then return headers(m) end
    return nil
  end,
  -- pairs(meta) sees status and headers, never the raw block
  __pairs = function(m)
    if rawget(m, "headers") == nil then headers(m) end
    return next, m, nil
  end,
}

function M.new(status, head)
  return setmetatable({ status = status, [HEAD] = head }, META)
end

return M
