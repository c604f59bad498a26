-- ibkr-session keepalive --listen under hostile clients (spec/helpers/hostile.lua, a process of its
-- own): while each attack holds its connections, the keep-alive goes on tickling (the mock counts
-- the tickles) and another client's scrape is answered; the listener's own figures show how it
-- bounded the attack. Asserted by events, never by time: how late tickles come under each attack
-- is measured by bench/sidecar.lua.
local socket = require("socket")
local mock = require("spec.helpers.mock")
local sidecar = require("spec.helpers.sidecar")
local hostile = require("spec.helpers.hostile")
local prom = require("spec.helpers.promparse")

-- Waits (asking the mock) until it has logged `n` tickles; fails after `limit` seconds.
local function tickles_reach(gw, n, limit)
  local stop = socket.gettime() + (limit or 30)
  local got
  repeat
    got = #gw:api_log("/tickle")
    if got >= n then return got end
    socket.select(nil, nil, 0.1)
  until socket.gettime() > stop
  error("the keep-alive stopped tickling under attack: " .. got .. " of " .. n .. " tickles")
end

local function value(fams, name, labels)
  local sum
  for _, smp in ipairs(fams[name] and fams[name].samples or {}) do
    local match = true
    for k, v in pairs(labels or {}) do if smp.labels[k] ~= v then match = false end end
    if match then sum = (sum or 0) + smp.value end
  end
  return sum or 0
end

describe("ibkr-session keepalive --listen under hostile clients", function()
  local gw, sc
  setup(function()
    gw = assert(mock.start{ tls = false })
    sc = sidecar.start(gw, { "--duration", "600" })
  end)
  teardown(function()
    if sc then sc:stop() end
    gw:stop()
  end)

  -- Starts the attack, waits until it holds its connections; returns the process.
  local function attack(kind)
    local p = assert(io.popen("echo $$; " .. hostile.command(kind, "127.0.0.1", sc.port)))
    local pid = p:read("l")
    assert.equal("ready", p:read("l"))
    finally(function()
      os.execute("kill " .. pid)
      p:close()
    end)
  end

  -- The keep-alive tickles twice more and a scrape is answered, all while the attack goes on;
  -- returns the listener's figures then.
  local function survives()
    local n0 = #gw:api_log("/tickle")
    tickles_reach(gw, n0 + 2)
    local status, _, body = sidecar.get(sc.port, "/metrics")
    assert.equal(200, status)
    return prom.parse(body)
  end

  it("clients that connect and send nothing", function()
    attack("idle")
    local fams = survives()
    assert.is_true(value(fams, "ibkr_listener_open_connections") <= 32)
  end)

  it("connections far beyond the limit: the oldest waiting one makes room for a new one", function()
    attack("beyond")
    local fams = survives()
    assert.is_true(value(fams, "ibkr_listener_evicted") > 0)
    assert.is_true(value(fams, "ibkr_listener_open_connections") <= 32)
  end)

  it("slowloris: heads sent a byte at a time never complete, and time out", function()
    attack("slowloris")
    survives()
    -- each head gets 5 s: wait for the listener to say it answered 408
    local stop = socket.gettime() + 30
    local timeouts
    repeat
      socket.select(nil, nil, 0.5)
      local _, _, body = sidecar.get(sc.port, "/metrics")
      timeouts = value(prom.parse(body), "ibkr_listener_answers", { code = "408" })
    until timeouts > 0 or socket.gettime() > stop
    assert.is_true(timeouts > 0)
  end)

  it("a 1 MB header sent slowly is cut at the head limit (431)", function()
    attack("bigheader")
    local stop = socket.gettime() + 30
    local fams
    repeat
      fams = survives()
    until value(fams, "ibkr_listener_answers", { code = "431" }) > 0 or socket.gettime() > stop
    assert.is_true(value(fams, "ibkr_listener_answers", { code = "431" }) > 0)
  end)

  it("half-open connections: a request then FIN, never read; half heads ended by a reset", function()
    attack("halfopen")
    survives()
  end)

  it("oversized and malformed requests are refused, each on its own connection", function()
    attack("malformed")
    local fams = survives()
    for _, code in ipairs{ "400", "414", "431", "505", "413" } do
      assert.is_true(value(fams, "ibkr_listener_answers", { code = code }) > 0, code)
    end
  end)

  it("pipelined floods that never read their answers", function()
    attack("pipeline")
    survives()
  end)

  it("clients that send requests and never read", function()
    attack("noread")
    survives()
  end)

  it("a flood of scrapes: every client is answered, and so is one more", function()
    attack("scrapes")
    local before = value(survives(), "ibkr_listener_answers", { code = "200" })
    local after = value(survives(), "ibkr_listener_answers", { code = "200" })
    assert.is_true(after > before + 10)
  end)

  it("after all of them, the sidecar holds no more memory than a quiet one does", function()
    local fams = survives()
    -- thousands of connections came and went (each attack replaces what the listener closes)
    assert.is_true(value(fams, "ibkr_listener_connections") > 1000)
    -- Under make asan's preload the resident size is the sanitizer's (its quarantine alone keeps
    -- up to 256 MB of freed blocks, its shadow an eighth of the heap): the bound holds in make test.
    if (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) then return end
    local f = assert(io.open("/proc/" .. sc.pid .. "/status"))
    local rss = tonumber(f:read("a"):match("VmRSS:%s*(%d+)"))
    f:close()
    assert.is_true(rss < 64 * 1024, rss .. " kB") -- a quiet sidecar: ~15 MB
  end)
end)
