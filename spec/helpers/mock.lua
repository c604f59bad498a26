-- The project's specs use the shipped test helper (ibkr.mock.testing, docs/testing.md) with the
-- checkout's bin/ibkr-mock-gateway; $IBKR_MOCK_GATEWAY wins (make asan sets it).
local testing = require("ibkr.mock.testing")

local root = debug.getinfo(1, "S").source:match("^@(.*)spec/helpers/mock%.lua$") or ""
testing.command = os.getenv("IBKR_MOCK_GATEWAY")
  or ("lua5.4 " .. testing.shell_quote((root == "" and "./" or root) .. "bin/ibkr-mock-gateway"))

return testing
