-- Bounded everywhere in the C API: arguments out of range get a clear error, never a wait on
-- another descriptor or an answer that makes a host loop spin; what a session opened -- on any
-- thread -- is closed when the session is.
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")
local raw = require("spec.helpers.raw")

local q = raw.q

-- how many descriptors this process holds (with the pipe of the ls that counts them)
local function descriptors()
  local stat = assert(io.open("/proc/self/stat"))
  local pid = stat:read("n")
  stat:close()
  local p = io.popen("ls /proc/" .. pid .. "/fd")
  local n = 0
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

-- runs Lua `code` (this checkout's module) in a shell with `limit` open files; its output
local function with_file_limit(limit, code)
  local p = io.popen("env -u LD_PRELOAD sh -c " .. q("ulimit -n " .. limit .. "; lua5.4 -e "
    .. q(raw.PRELUDE .. code)) .. " 2>&1")
  local out = p:read("a")
  p:close()
  return out
end

describe("core.poll", function()
  it("raises for a descriptor out of range instead of waiting on another one", function()
    for _, fd in ipairs{ 2 ^ 31, 2 ^ 32, -1, math.maxinteger, math.mininteger } do
      local ok, err = pcall(core.poll, { math.tointeger(fd) }, 0)
      assert.is_false(ok, tostring(fd))
      assert.matches("descriptor %-?%d+ out of range", err)
    end
    assert.has_error(function() core.poll({ 0.5 }, 0) end)
  end)

  it("raises for events it does not know instead of waiting for something else", function()
    local socket = require("socket")
    local server = assert(socket.bind("127.0.0.1", 0))
    local c = assert(socket.tcp())
    assert(c:connect(server:getsockname()))
    local fd = math.tointeger(c:getfd())
    -- what it knows: a connected socket is writable, not readable yet
    for _, ev in ipairs{ "w", "rw", "wr" } do assert.same({ 1 }, { core.poll({ fd }, 5, { ev }) }) end
    assert.same({}, { core.poll({ fd }, 0, { "r" }) })
    for _, bad in ipairs{ "x", "", "rrw", "ww", "R", "W", "r ", "read", 1, true, {} } do
      local ok, err = pcall(core.poll, { fd }, 0, { bad })
      assert.is_false(ok, tostring(bad))
      assert.matches("bad argument #3 .*events must be \"r\", \"w\" or \"rw\"", err)
    end
    -- events as one string (not a table by position) was read as none given
    for _, bad in ipairs{ "w", "rw", 1, true } do
      local ok, err = pcall(core.poll, { fd }, 0, bad)
      assert.is_false(ok, tostring(bad))
      assert.matches("bad argument #3 .*events must be a table", err)
    end
    c:close()
    server:close()
  end)

  it("raises for a timeout that is NaN or negative", function()
    assert.has_error(function() core.poll({ 0 }, 0 / 0) end)
    assert.has_error(function() core.poll({ 0 }, -1) end)
  end)

  it("raises for more descriptors than the open-file limit instead of saying none is ready", function()
    local out = with_file_limit(64, [[
      local core = require("ibkr.core")
      local fds = {}
      for i = 1, 100 do fds[i] = 0 end
      local ok, err = pcall(core.poll, fds, 0)
      print(ok, err)
    ]])
    assert.matches("false\t.*100 descriptors, more than the open%-file limit %(64%)", out)
  end)
end)

describe("core.signal_wait and core.signal_catch", function()
  it("raise for a descriptor out of range and for more names than they take", function()
    assert.has_error(function() core.signal_wait(0, 2 ^ 32) end)
    assert.has_error(function() core.signal_wait(0, -2) end)
    local names = {}
    for i = 1, 17 do names[i] = "USR1" end
    local ok, err = pcall(core.signal_catch, names)
    assert.is_false(ok)
    assert.matches("at most 16 signal names", err, 1, true)
  end)
end)

describe("core.oauth.modexp", function()
  it("raises for numbers larger than 8192 bits (a huge exponent would take minutes)", function()
    local big = ("f"):rep(2049)
    assert.has_error(function() core.oauth.modexp("2", big, "ff") end)
    assert.are.equal("1", core.oauth.modexp("2", "0", "ff"))
  end)
end)

describe("a session", function()
  local m
  setup(function() m = assert(mock.start{ tls = false, pacing = false }) end)
  teardown(function() if m then m:stop() end end)

  it("closes every connection it opened, the engine thread's too, when it is closed", function()
    -- the engine thread and its descriptors exist before the count
    local warm = core.new{ base_url = m.url }
    local req = assert(warm:start("POST", "/tickle"))
    assert(req:wait(5))
    req:close()
    warm:close()
    local before = descriptors()
    local sessions = {}
    for i = 1, 10 do
      local s = core.new{ base_url = m.url }
      local reqs = {}
      -- side by side: one in the warm lane, the others on the engine thread, each connection kept
      for k = 1, 4 do reqs[k] = assert(s:start("GET", "/sso/validate")) end
      for k = 1, 4 do
        assert(reqs[k]:wait(10))
        assert(reqs[k]:result())
        reqs[k]:close()
      end
      sessions[i] = s
    end
    assert.is_true(descriptors() > before + 10, "the sessions kept no connection")
    for _, s in ipairs(sessions) do s:close() end
    assert.are.equal(before, descriptors())
  end)

  it("refuses a URL longer than libcurl takes with a clear error, and goes on", function()
    local s = core.new{ base_url = m.url }
    assert.has_error(function() s:perform("GET", "/sso/validate?" .. ("a"):rep(8000000)) end,
      "the URL would be " .. (#m.url + 14 + 8000000) .. " bytes, more than libcurl takes (8000000): "
      .. "shorten the path or the query")
    assert(s:perform("GET", "/sso/validate"))
    s:close()
    assert.has_error(function() core.new{ base_url = m.url, user_agent = ("a"):rep(8000001) } end,
      "option 'user_agent' is longer than libcurl takes (8000000 bytes)")
  end)
end)
