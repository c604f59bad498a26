-- ibkr-session's loop (ibkr/cli/drive.lua) with watchers beside the coroutine: what the listener
-- and the --on-change runner rely on. In process, with real descriptors.
local core = require("ibkr.core")
local drive = require("ibkr.cli.drive")

-- A watcher that wants a step at once and leaves the set at its first step.
local Once = {}
Once.__index = Once
function Once.pollfd() return nil end
function Once.timeout() return 0 end
function Once:step() self.set:remove(self) end

describe("ibkr-session's loop with watchers", function()
  it("keeps none of the watchers that came and went (a closed connection is not held)", function()
    local set = drive.watchers()
    local n, target, heap = 0, 20000, nil
    local co = coroutine.create(function()
      while n < target do
        for _ = 1, 100 do
          set:add(setmetatable({ set = set, payload = ("x"):rep(1000) .. n }, Once))
          n = n + 1
        end
        coroutine.yield(0)
      end
      coroutine.yield(0) -- the last ones stepped and gone; then, with the loop still running:
      collectgarbage()
      collectgarbage()
      heap = collectgarbage("count")
    end)
    assert.equal("done", (drive.run(co, { watchers = set })))
    assert.equal(0, set:count())
    -- 20,000 watchers of over 1 KB each went through: what is left is the loop's own, not theirs
    assert.is_true(heap < 8 * 1024, heap .. " KB")
  end)

  it("steps a watcher when its descriptor is ready, and the coroutine when it is due", function()
    local set = drive.watchers()
    local p = assert(core.spawn({ "/bin/sh", "-c", "echo hello" }))
    local got, saw_ready = "", false
    local w = { pollfd = function() return p:pollfd() end, events = function() return "r" end,
      timeout = function() return p:timeout() end }
    function w.step(_, ready)
      saw_ready = saw_ready or ready
      got = got .. p:read()
      if p:wait() then
        set:remove(w)
        p:close()
      end
    end
    set:add(w)
    local co = coroutine.create(function()
      while set:count() > 0 do coroutine.yield(0.01) end
    end)
    assert.equal("done", (drive.run(co, { watchers = set, deadline = core.monotonic() + 60 })))
    assert.equal("hello\n", got)
    assert.is_true(saw_ready)
  end)

  it("removes a watcher whose step raises, says why, and goes on", function()
    local set = drive.watchers()
    local bad = { pollfd = function() return nil end, timeout = function() return 0 end,
      step = function() error("boom") end }
    set:add(bad)
    local errors, resumes = {}, 0
    local co = coroutine.create(function()
      for _ = 1, 3 do
        resumes = resumes + 1
        coroutine.yield(0)
      end
    end)
    local on_error = function(e) errors[#errors + 1] = e end
    assert.equal("done", (drive.run(co, { watchers = set, on_error = on_error })))
    assert.equal(3, resumes)
    assert.equal(0, set:count())
    assert.equal(1, #errors)
    assert.matches("boom", errors[1])
  end)
end)
