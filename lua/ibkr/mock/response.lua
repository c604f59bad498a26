-- Response descriptors understood by ibkr.mock.net.server:
--   status, reason, headers = { {name, value}, ... }, body = string,
--   stream = { length = n, chunks = iterator-factory }, chunked = bool, close = bool,
--   delay = seconds before the head, pause_mid = seconds between the two halves of the body,
--   drop = "before" | "mid", no_length = bool.
local json = require("ibkr.mock.json")

local response = {}

function response.raw(status, content_type, body, headers)
  local h = {}
  if content_type and content_type ~= "" then
    h[1] = { "Content-Type", content_type }
  end
  for _, hv in ipairs(headers or {}) do
    h[#h + 1] = hv
  end
  return { status = status, headers = h, body = body or "" }
end

function response.json(status, value, headers)
  return response.raw(status, "application/json", json.encode(value), headers)
end

function response.error(status, message, headers)
  return response.json(status, { error = message }, headers)
end

return response
