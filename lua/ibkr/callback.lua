-- User callbacks (on_state, on_message, ...): what one raises never reaches the host. It becomes
-- an error object of kind "callback" (field `callback` = the callback's name, `cause` = what was
-- raised) handed to on_error; one raised in on_error itself has nowhere to go and is dropped.
-- Used by the keep-alive and the push channel.
local core = require("ibkr.core")

local M = {}

-- What a callback raised, as text: a value whose __tostring raises, yields or returns no string
-- must not make the caller raise.
local function raised_text(e)
  local ok, msg = pcall(tostring, e)
  if ok and type(msg) == "string" then return msg end
  return "a " .. type(e) .. " value that cannot be shown"
end

-- call(f, name, on_error, ...): f(...) protected; on failure on_error(err) (protected), if given.
function M.call(f, name, on_error, ...)
  local ok, e = pcall(f, ...)
  if ok or name == "on_error" or not on_error then return end
  pcall(on_error, core.error{ kind = "callback", callback = name, cause = e,
    message = "error in " .. name .. ": " .. raised_text(e) })
end

return M
