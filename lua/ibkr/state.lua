-- Session states, from a status body or from an error, exactly as s:health() reports them:
-- "ready", "competing", "unauthenticated", "disconnected", "no_session", "down", "error".

local M = {}

-- State of a brokerage status table (the body of /iserver/auth/status, ssodh/init, or the
-- iserver.authStatus of a tickle). The checks go from the outermost failure inwards, as ibeam
-- does: no session, not connected, competing, then authentication. Authenticated but not yet
-- `established` counts as unauthenticated: the brokerage session cannot serve requests yet.
function M.of_status(st)
  if type(st) ~= "table" then return "error" end
  if st.error == "no session" then return "no_session" end
  if st.connected == false then return "disconnected" end
  if st.competing == true then return "competing" end
  if st.authenticated == true and st.established ~= false then return "ready" end
  if st.authenticated ~= nil or st.connected ~= nil then return "unauthenticated" end
  return "error" -- neither key: not a status body (e.g. {"error":"failed to process request"})
end

-- State of a failed call's error object.
function M.of_error(err)
  local kind = err.kind
  if kind == "connect" or kind == "timeout" or kind == "tls" then return "down" end
  if kind == "http" and err.status == 401 then return "no_session" end
  if type(err.data) == "table" and err.data.error == "no session" then return "no_session" end
  return "error"
end

-- The status table carried by a tickle body, or nil (then ask /iserver/auth/status).
function M.tickle_status(body)
  local is = type(body) == "table" and body.iserver
  local st = type(is) == "table" and is.authStatus
  if type(st) == "table" then return st end
  return nil
end

return M
