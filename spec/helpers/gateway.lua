-- The prologue of the specs that run against one mock gateway (HTTP, no pacing, repairs that take
-- effect at once), put back to its start-up state before every test: its state, settings, faults,
-- log and penalty box (m:reset()). Call it inside a describe:
--   local m, s, ft
--   gateway.each(function(f) m, s, ft = f.m, f.s, f.ft end, { session = true })
-- `use` gets, before every test, f.m (the mock) and with session = true f.s, a new ibkr session on
-- it running on f.ft, a fake clock (spec/helpers/clock.lua); the session is closed after the test.
local busted = require("busted") -- its setup, teardown, before_each and after_each
local ibkr = require("ibkr")
local mock = require("spec.helpers.mock")
local fake_time = require("spec.helpers.clock").new

local M = {}

M.OPTIONS = { tls = false, pacing = false, init_delay = 0, reauth_delay = 0 }

function M.each(use, opts)
  opts = opts or {}
  local f = {}
  busted.setup(function() f.m = assert(mock.start(M.OPTIONS)) end)
  busted.teardown(function() f.m:stop() end)
  busted.before_each(function()
    f.m:reset()
    if opts.session then
      f.ft = fake_time()
      f.s = ibkr.new{ base_url = f.m.url, clock = f.ft.clock, sleep = f.ft.sleep }
    end
    use(f)
  end)
  busted.after_each(function()
    if f.s then f.s:close() end
  end)
end

return M
