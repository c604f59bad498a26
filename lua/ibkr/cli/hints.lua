-- ibkr-session's diagnoses: what a failure most likely means and what to do about it. The
-- registry of kinds (ibkr/kinds.lua) decides; this names it for the command line.
-- Pure functions of the error (or state) and the command line; no I/O.

local kinds = require("ibkr.kinds")

local M = {}

-- The gateway's root URL, where a browser logs in ("https://localhost:5000/").
M.login_url = kinds.login_url

-- A hint line (without "hint: ") for a failed call's error, or nil.
-- ctx: { url = base URL, cacert = FILE or nil, url_from_env = bool, proxy = URL or nil }
M.for_error = kinds.hint

-- A hint for a state that is not ready, or nil.
M.for_state = kinds.state_hint

return M
