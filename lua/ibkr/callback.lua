-- User callbacks (on_state, on_message, ...): what one raises never reaches the host. It becomes
-- an error object of kind "callback" (field `callback` = the callback's name, `cause` = what was
-- raised, as text by check.text: a value whose __tostring raises or yields cannot make the caller
-- raise) handed to on_error; one raised in on_error itself has nowhere to go and is dropped.
-- Used by the keep-alive and the push channel.
local core = require("ibkr.core")
local check = require("ibkr.check")

local M = {}

-- call(f, name, on_error, ...): f(...) protected; on failure on_error(err) (protected), if given.
function M.call(f, name, on_error, ...)
  local ok, e = pcall(f, ...)
  if ok or name == "on_error" or not on_error then return end
  pcall(on_error, core.error{ kind = "callback", callback = name, cause = e,
    message = "error in " .. name .. ": " .. check.text(e) })
end

return M
