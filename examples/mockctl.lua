-- mockctl: one request to the mock gateway's control API (or any path under its root), for the
-- demo script. Usage: lua5.4 examples/mockctl.lua ROOT METHOD PATH [JSON-BODY]
--   ROOT = https://127.0.0.1:PORT (the mock's base URL without /v1/api)
-- Uses the library itself (pacing off, no retries); prints nothing, exits 1 on failure.
local dir = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/.."
package.path = dir .. "/lua/?.lua;" .. dir .. "/lua/?/init.lua;" .. package.path
package.cpath = dir .. "/?.so;" .. package.cpath
local ibkr = require("ibkr")

local root, method, path, body = arg[1], arg[2], arg[3], arg[4]
if not (root and method and path) then
  io.stderr:write("usage: mockctl.lua ROOT METHOD PATH [JSON-BODY]\n")
  os.exit(64)
end
local s = ibkr.new{ base_url = root, pacing = false, retries = 0 }
local res, err = s:request(method, path, { body = body, retry = false })
s:close()
if not res then
  io.stderr:write("mockctl: ", tostring(err), "\n")
  os.exit(1)
end
