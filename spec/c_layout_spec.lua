-- The C module's layout, checked against what the compiler makes of it: who calls whom (each
-- object's undefined symbols, resolved to the file that defines them) is what docs/core.md draws
-- and what each file's header says; calls go one way; every exported name carries its file's
-- prefix; the shared object exports luaopen_ibkr_core alone; core.kinds is the documented list.
local core = require("ibkr.core")
local raw = require("spec.helpers.raw")

local q = raw.q

local function sh(cmd)
  local p = assert(io.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1"))
  local out = p:read("a")
  return p:close(), out
end

local function slurp(path)
  return assert(io.open(path, "rb")):read("a")
end

local function set(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- the C sources, as named in the docs: "core.c", "lib/engine.c"
local function sources()
  local ok, out = sh("ls src/*.c src/lib/*.c")
  assert(ok, out)
  local files = {}
  for path in out:gmatch("[^\n]+") do files[#files + 1] = path:gsub("^src/", "") end
  return files
end

-- compiles every source to an object; returns, per file, the set of files it calls and the list
-- of global names it defines
local function objects()
  local dir = os.tmpname()
  os.remove(dir)
  assert(sh("mkdir -p " .. q(dir)))
  local files, defines, undefined = sources(), {}, {}
  local flags = "-std=c99 -D_POSIX_C_SOURCE=200809L -fPIC $(pkg-config --cflags lua5.4 libcurl 2>/dev/null"
    .. " || echo -I/usr/include/lua5.4)"
  for _, file in ipairs(files) do
    local obj = dir .. "/" .. file:gsub("/", "_") .. ".o"
    local ok, out = sh("cc " .. flags .. " -c -o " .. q(obj) .. " " .. q("src/" .. file))
    assert(ok, out)
    ok, out = sh("nm " .. q(obj))
    assert(ok, out)
    defines[file], undefined[file] = {}, {}
    for line in out:gmatch("[^\n]+") do
      local kind, name = line:match("^%x+ (%u) (%S+)$")
      if kind and ("TDBR"):find(kind, 1, true) then defines[file][#defines[file] + 1] = name end
      name = line:match("^%s+U (%S+)$")
      if name then undefined[file][#undefined[file] + 1] = name end
    end
  end
  assert(sh("rm -rf " .. q(dir)))
  local owner = {}
  for file, names in pairs(defines) do
    for _, name in ipairs(names) do owner[name] = file end
  end
  local calls = {}
  for file, names in pairs(undefined) do
    calls[file] = {}
    for _, name in ipairs(names) do
      if owner[name] then calls[file][owner[name]] = true end
    end
  end
  return calls, defines, files
end

local CALLS, DEFINES, FILES

setup(function()
  CALLS, DEFINES, FILES = objects()
end)

describe("the C module's layout", function()
  it("is the call graph docs/core.md draws, edge for edge", function()
    local doc = slurp("docs/core.md")
    local drawn = {}
    for file, rest in doc:gmatch("\n(%S+%.c)%s+%->([^\n]*)") do
      drawn[file] = {}
      for callee in rest:gmatch("%S+") do drawn[file][callee] = true end
    end
    assert.are.same(FILES, sorted_keys(drawn), "docs/core.md must draw every C file")
    for _, file in ipairs(FILES) do
      assert.are.same(sorted_keys(CALLS[file]), sorted_keys(drawn[file]), "the calls of " .. file)
    end
  end)

  it("is what each file's header says: Called by and Calls", function()
    local called_by = {}
    for _, file in ipairs(FILES) do called_by[file] = {} end
    for file, callees in pairs(CALLS) do
      for callee in pairs(callees) do called_by[callee][file] = true end
    end
    local function named(line)
      local s = {}
      for f in line:gmatch("%f[%w/][%w/]+%.c%f[^%w]") do s[f] = true end
      return sorted_keys(s)
    end
    for _, file in ipairs(FILES) do
      local head = slurp("src/" .. file):match("^/%*(.-)%*/")
      local by = assert(head:match("\n%*%* Called by: ([^\n]*)"), file .. ": no 'Called by:' line")
      local to = assert(head:match("\n%*%* Calls: ([^\n]*)"), file .. ": no 'Calls:' line")
      assert.are.same(sorted_keys(called_by[file]), named(by), file .. "'s Called by")
      assert.are.same(sorted_keys(CALLS[file]), named(to), file .. "'s Calls")
    end
  end)

  it("goes one way: no file calls, directly or not, into a file that calls it", function()
    local state = {}
    local function visit(file, path)
      if state[file] == "done" then return end
      assert(state[file] ~= "open", "a cycle: " .. table.concat(path, " -> ") .. " -> " .. file)
      state[file] = "open"
      path[#path + 1] = file
      for callee in pairs(CALLS[file]) do visit(callee, path) end
      path[#path] = nil
      state[file] = "done"
    end
    for _, file in ipairs(FILES) do visit(file, {}) end
  end)

  it("keeps src/lib/ free of the Lua API, and the Lua side above it", function()
    for _, file in ipairs(FILES) do
      if file:find("^lib/") then
        for callee in pairs(CALLS[file]) do
          assert.truthy(callee:find("^lib/"), file .. " calls " .. callee .. ", which faces Lua")
        end
        assert.is_nil(slurp("src/" .. file):find("#%s*include%s*[<\"][^>\"]*lua"), file .. " includes Lua")
      end
    end
  end)

  it("names every exported C function after its file; the module exports luaopen_ibkr_core alone", function()
    for _, file in ipairs(FILES) do
      local prefix = file:match("([%w]+)%.c$") .. "_"
      for _, name in ipairs(DEFINES[file]) do
        if name ~= "luaopen_ibkr_core" then
          assert.are.equal(prefix, name:sub(1, #prefix), file .. " exports " .. name)
        end
      end
    end
    local ok, out = sh("nm -D --defined-only ibkr/core.so")
    assert(ok, out)
    local exported = {}
    for name in out:gmatch("%x+ T (%S+)") do exported[#exported + 1] = name end
    assert.are.same({ "luaopen_ibkr_core" }, exported)
  end)

  it("documents core.kinds, the kinds the core reports, in docs/core.md's table", function()
    local doc = slurp("docs/core.md"):match("\n## Errors from the core\n(.-)\n## ")
    local listed = {}
    for kind in doc:gmatch("\n| `([%w_]+)` |") do listed[#listed + 1] = kind end
    assert.are.same(core.kinds, listed)
    assert.are.equal(#core.kinds, #sorted_keys(set(core.kinds)))
    for _, kind in ipairs(core.kinds) do
      assert.truthy(slurp("src/lib/kind.h"):find('X%(%u[%u_]*, "' .. kind .. '"%)'), kind)
    end
  end)
end)
