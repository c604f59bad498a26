-- The rock: the rockspec names every module, script and C source of the tree, and `luarocks make`
-- installs it offline into a fresh tree from which `require "ibkr"` and the scripts work.
local core = require("ibkr.core")

local ROCKSPEC = "rockspec/ibkr-web-api-" .. core._VERSION .. "-1.rockspec"

local function load_rockspec()
  local env = {}
  local chunk = assert(loadfile(ROCKSPEC, "t", env))
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

describe("the rockspec", function()
  local spec = load_rockspec()

  it("is the package ibkr-web-api at the module's version", function()
    assert.are.equal("ibkr-web-api", spec.package)
    assert.are.equal(core._VERSION .. "-1", spec.version)
  end)

  it("installs every Lua file of lua/ as its module", function()
    local modules = spec.build.modules
    local listed = 0
    for _, file in ipairs(lines("find lua -name '*.lua' | sort")) do
      local name = file:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      assert.are.equal(file, modules[name], "module " .. name .. " missing from the rockspec")
      listed = listed + 1
    end
    local n = 0
    for _, v in pairs(modules) do if type(v) == "string" then n = n + 1 end end
    assert.are.equal(listed, n)
  end)

  it("builds ibkr.core from every C source and installs every script of bin/", function()
    local srcs = spec.build.modules["ibkr.core"].sources
    assert.are.same(lines("ls src/*.c | sort"), (function()
      local t = { table.unpack(srcs) }
      table.sort(t)
      return t
    end)())
    local bins = lines("ls bin")
    for _, b in ipairs(bins) do assert.are.equal("bin/" .. b, spec.build.install.bin[b]) end
  end)
end)

describe("luarocks make", function()
  local tree, copy

  setup(function()
    tree = os.tmpname()
    os.remove(tree)
    -- build from a copy: luarocks writes objects and ibkr/core.so next to the sources
    copy = os.tmpname()
    os.remove(copy)
    local cp = "mkdir -p '" .. copy .. "' && cp -r src lua bin rockspec '" .. copy .. "'"
    assert(os.execute(cp))
  end)
  teardown(function()
    if tree then os.execute("rm -rf '" .. tree .. "' '" .. copy .. "'") end
  end)

  it("installs offline into a fresh tree, where require 'ibkr' and the scripts work", function()
    local ok, out = sh("cd '" .. copy .. "' && luarocks --lua-version=5.4 --tree='" .. tree .. "'"
      .. " make --deps-mode=none "
      .. ROCKSPEC .. " CFLAGS='-O2 -fPIC -Wall -Wextra -Werror'")
    assert.is_true(ok, out)
    -- the in-tree build must not be what gets loaded: run from / with only the tree's paths
    local env = "cd / && eval \"$(luarocks --lua-version=5.4 --tree='" .. tree .. "' path)\" && "
    local ok2, v = sh(env .. "lua5.4 -e 'local i = require(\"ibkr\"); "
      .. "io.write(i._VERSION, \" \", package.searchpath(\"ibkr.core\", package.cpath))'")
    assert.is_true(ok2, v)
    assert.are.equal(core._VERSION .. " " .. tree .. "/lib/lua/5.4/ibkr/core.so", v)
    local ok3, usage, code = sh(env .. "'" .. tree .. "/bin/ibkr-session' --no-such-option")
    assert.is_nil(ok3)
    assert.are.equal(64, code, usage)
    local ok4, mock_usage, code4 = sh(env .. "'" .. tree .. "/bin/ibkr-mock-gateway' --state nonsense")
    assert.is_nil(ok4)
    assert.are.equal(64, code4, mock_usage)
  end)
end)
