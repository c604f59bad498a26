-- The rocks: ibkr-web-api (the client) and ibkr-web-api-mock (the mock gateway and the test helper)
-- name every module, script and C source of the tree between them; their scm rockspecs build the
-- same; every mention of the version agrees with lua/ibkr/version.lua; `make dist`'s source rocks
-- install offline into a fresh tree from which `require "ibkr"` and the scripts work (against the
-- mock); `make install` builds outside the checkout; and the README's commands test the checkout
-- whatever the shell's Lua variables hold.
local core = require("ibkr.core")

local VERSION = dofile("lua/ibkr/version.lua")
local ROCKS = { "ibkr-web-api", "ibkr-web-api-mock" }

local function rockspec_file(rock, version)
  return "rockspec/" .. rock .. "-" .. version .. "-1.rockspec"
end

local function load_rockspec(file)
  local env = {}
  local chunk = assert(loadfile(file, "t", env))
  chunk()
  return env
end

local function lines(cmd)
  local p = assert(io.popen(cmd))
  local out = {}
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok, out, code
end

local function slurp(file)
  local f = assert(io.open(file, "r"))
  local s = f:read("a")
  f:close()
  return s
end

describe("the rockspecs", function()
  local client = load_rockspec(rockspec_file("ibkr-web-api", VERSION))
  local mockrock = load_rockspec(rockspec_file("ibkr-web-api-mock", VERSION))

  it("are the packages ibkr-web-api and ibkr-web-api-mock at the version", function()
    assert.are.equal("ibkr-web-api", client.package)
    assert.are.equal("ibkr-web-api-mock", mockrock.package)
    for _, r in ipairs({ client, mockrock }) do
      assert.are.equal(VERSION .. "-1", r.version)
      assert.are.equal("v" .. VERSION, r.source.tag)
      assert.are.equal("MIT", r.description.license)
    end
    local dep = false
    for _, d in ipairs(mockrock.dependencies) do dep = dep or d == "ibkr-web-api = " .. VERSION end
    assert.is_true(dep, "the mock rock depends on this very client version")
  end)

  it("install every Lua file of lua/ as its module, once; ibkr.mock.* only in the mock rock", function()
    local seen = {}
    for _, r in ipairs({ client, mockrock }) do
      for name, v in pairs(r.build.modules) do
        if type(v) == "string" then
          assert.is_nil(seen[name], name .. " is in both rocks")
          seen[name] = v
          assert.are.equal(r == mockrock, name:find("^ibkr%.mock") ~= nil, name)
        end
      end
    end
    local listed = 0
    for _, file in ipairs(lines("find lua -name '*.lua' | sort")) do
      local name = file:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      assert.are.equal(file, seen[name], "module " .. name .. " missing from the rockspecs")
      listed = listed + 1
    end
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.are.equal(listed, n)
  end)

  it("build ibkr.core from every C source, without -Werror; install every script of bin/", function()
    local srcs = client.build.modules["ibkr.core"].sources
    local sorted = { table.unpack(srcs) }
    table.sort(sorted)
    assert.are.same(lines("ls src/*.c src/lib/*.c | sort"), sorted)
    assert.is_nil(slurp(rockspec_file("ibkr-web-api", VERSION)):find("Werror", 1, true))
    local bins = {}
    for _, r in ipairs({ client, mockrock }) do
      for b, file in pairs(r.build.install.bin) do
        assert.is_nil(bins[b])
        bins[b] = file
      end
    end
    for _, b in ipairs(lines("ls bin")) do assert.are.equal("bin/" .. b, bins[b]) end
    assert.are.equal("bin/ibkr-mock-gateway", mockrock.build.install.bin["ibkr-mock-gateway"])
  end)

  it("have scm twins that build the same from the main branch", function()
    for _, rock in ipairs(ROCKS) do
      local rel = load_rockspec(rockspec_file(rock, VERSION))
      local scm = load_rockspec(rockspec_file(rock, "scm"))
      assert.are.equal("scm-1", scm.version)
      assert.is_nil(scm.source.tag)
      assert.are.equal(rel.source.url, scm.source.url)
      assert.are.same(rel.build, scm.build, "run make scm-rockspecs")
      assert.are.equal(#rel.dependencies, #scm.dependencies)
    end
    assert.are.same(lines("ls rockspec | sort"), {
      "ibkr-web-api-" .. VERSION .. "-1.rockspec", "ibkr-web-api-mock-" .. VERSION .. "-1.rockspec",
      "ibkr-web-api-mock-scm-1.rockspec", "ibkr-web-api-scm-1.rockspec",
    })
  end)
end)

describe("the version", function()
  it("is written once: every mention agrees with lua/ibkr/version.lua", function()
    assert.matches("^%d+%.%d+%.%d+$", VERSION)
    assert.are.equal(VERSION, require("ibkr")._VERSION)
    assert.are.equal(VERSION, core._VERSION)
    assert.are.equal(VERSION, require("ibkr.mock")._VERSION)
    assert.are.equal(VERSION, slurp("src/ibkr.h"):match('#define IBKR_VERSION "([^"]+)"'))
    assert.are.equal(VERSION, slurp("CHANGELOG.md"):match("\n## %[(%d+%.%d+%.%d+)%]"))
    local ok, out = sh("lua5.4 bin/ibkr-mock-gateway --version")
    assert.is_true(ok, out)
    assert.are.equal("ibkr-mock-gateway " .. VERSION .. "\n", out)
    ok, out = sh("make -s -n install")
    assert.is_true(ok, out)
    assert.matches(rockspec_file("ibkr-web-api", VERSION), out, 1, true)
    -- a user agent or any "lua-ibkr/X.Y.Z" in a tracked file (docs, benchmarks, fixtures)
    local mentions = lines("git ls-files -z | xargs -0 grep -IhoE 'lua-ibkr/[0-9]+\\.[0-9]+\\.[0-9]+' "
      .. "2>/dev/null | sort -u")
    for _, m in ipairs(mentions) do assert.are.equal("lua-ibkr/" .. VERSION, m) end
    -- the source rocks of make dist, as the README and docs name them
    local rocks = lines("git ls-files -z | xargs -0 grep -IhoE "
      .. "'ibkr-web-api(-mock)?-[0-9]+\\.[0-9]+\\.[0-9]+-1\\.src' 2>/dev/null | sort -u")
    assert.is_true(#rocks > 0)
    for _, r in ipairs(rocks) do assert.matches("%-" .. VERSION:gsub("%.", "%%.") .. "%-1%.src$", r) end
  end)
end)

describe("make dist and make install", function()
  local tmp, m

  setup(function()
    tmp = os.tmpname()
    os.remove(tmp)
    assert(os.execute("mkdir -p '" .. tmp .. "/dist' '" .. tmp .. "/tree' '" .. tmp .. "/no-server'"))
    m = assert(require("spec.helpers.mock").start{ tls = true, pacing = false })
  end)
  teardown(function()
    if m then m:stop() end
    if tmp then os.execute("rm -rf '" .. tmp .. "'") end
  end)

  it("make dist: two source rocks that install offline into a fresh tree, from anywhere, and work", function()
    local so = lines("stat -c '%i %Y' ibkr/core.so")[1]
    local ok, out = sh("make -s dist DIST='" .. tmp .. "/dist'")
    assert.is_true(ok, out)
    -- what a user does with them: from another directory, no rock server (an empty one), no
    -- dependency look-up (Debian provides them), the README's command
    for _, rock in ipairs(ROCKS) do
      local file = tmp .. "/dist/" .. rock .. "-" .. VERSION .. "-1.src.rock"
      assert.matches(file, out, 1, true)
      local ok2, out2 = sh("cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_INIT luarocks --lua-version=5.4"
        .. " --tree='" .. tmp .. "/tree' --only-server='" .. tmp .. "/no-server' install '" .. file
        .. "' --deps-mode=none CFLAGS='-O2 -fPIC -Wall -Wextra -Werror'")
      assert.is_true(ok2, out2)
    end
    assert.are.equal(so, lines("stat -c '%i %Y' ibkr/core.so")[1], "the checkout's module was rebuilt")
    -- the installed copy is what runs: from / with only the tree's paths
    local tree = tmp .. "/tree"
    local env = "cd / && unset LUA_PATH_5_4 LUA_CPATH_5_4 && "
      .. "eval \"$(luarocks --lua-version=5.4 --tree='" .. tree .. "' path)\" && "
    local ok3, v = sh(env .. "lua5.4 -e 'local i = require(\"ibkr\"); "
      .. "io.write(i._VERSION, \" \", package.searchpath(\"ibkr.core\", package.cpath), \" \", "
      .. "package.searchpath(\"ibkr.mock.testing\", package.path))'")
    assert.is_true(ok3, v)
    assert.are.equal(VERSION .. " " .. tree .. "/lib/lua/5.4/ibkr/core.so " .. tree
      .. "/share/lua/5.4/ibkr/mock/testing.lua", v)
    -- the installed ibkr-session against a mock gateway; the installed mock gateway itself
    local ok4, status = sh(env .. "'" .. tree .. "/bin/ibkr-session' --url '" .. m.url .. "' status")
    assert.is_true(ok4, status)
    assert.matches("^ready", status)
    local ok5, mock_usage, code5 = sh(env .. "'" .. tree .. "/bin/ibkr-mock-gateway' --state nonsense")
    assert.is_nil(ok5)
    assert.are.equal(64, code5, mock_usage)
    local ok6, version = sh(env .. "'" .. tree .. "/bin/ibkr-mock-gateway' --version")
    assert.is_true(ok6, version)
    assert.are.equal("ibkr-mock-gateway " .. VERSION .. "\n", version)
  end)

  it("make install installs those source rocks: luarocks builds them elsewhere, not here", function()
    local ok, out = sh("make -s -n install TREE=/t DIST=/d")
    assert.is_true(ok, out)
    for _, rock in ipairs(ROCKS) do
      assert.matches("luarocks %-%-lua%-version=5%.4 %-%-tree=/t install %-%-deps%-mode=none[%s\\]+/d/"
        .. rock:gsub("%-", "%%-") .. "%-" .. VERSION:gsub("%.", "%%.") .. "%-1%.src%.rock", out)
    end
    assert.is_nil(out:find("luarocks[^\n]* make", 1), "luarocks make builds in the current directory")
  end)
end)

describe("the README's commands in a hostile shell", function()
  -- the usual Lua 5.4 profile (Debian's luacheck and luarocks run on 5.1 and would load 5.4's
  -- lfs.so), a LUA_INIT that fails, and an "installed" ibkr that must never be the one tested
  local poison

  setup(function()
    poison = os.tmpname()
    os.remove(poison)
    assert(os.execute("mkdir -p '" .. poison .. "/ibkr'"))
    local f = assert(io.open(poison .. "/ibkr/init.lua", "w"))
    f:write('error("the installed copy of ibkr was loaded, not the checkout")\n')
    f:close()
  end)
  teardown(function()
    os.execute("rm -rf '" .. poison .. "'")
  end)

  local function hostile(cmd)
    return sh("eval \"$(luarocks --lua-version=5.4 path)\" && "
      .. "export LUA_INIT='error(\"LUA_INIT ran\")' LUA_INIT_5_4='error(\"LUA_INIT_5_4 ran\")' && "
      .. "export LUA_PATH=\"" .. poison .. "/?.lua;" .. poison .. "/?/init.lua;$LUA_PATH\" && "
      .. "export LUA_PATH_5_4=\"$LUA_PATH\" LUA_CPATH_5_4=\"$LUA_CPATH\" && " .. cmd)
  end

  it("make lint passes", function()
    local ok, out = hostile("make -s lint")
    assert.is_true(ok, out)
  end)

  it("spec/run tests the checkout", function()
    local ok, out = hostile("spec/run spec/state_spec.lua")
    assert.is_true(ok, out)
    assert.matches("\n%d+ passed, 0 failed\n$", out)
  end)
end)
