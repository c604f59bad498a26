-- Every name the documents mention exists: README.md, docs/*.md and the comments of examples/.
-- spec/helpers/doc_names.lua lists the mentions in the project's own namespaces (ibkr.x,
-- require("ibkr.x"), core.x, s:method, s.field, req:, err.field, module members, ibkr-session and
-- ibkr-mock-gateway commands and options, /__mock/ endpoints, make targets, paths, x_spec, IBKR_*
-- names, C names next to their file, links and anchors, "Section" references with below/above,
-- §N of docs/gateway-facts.md); this spec checks each against the real thing: the modules as
-- loaded, objects made from them (sessions and requests against a mock gateway, the mock's test
-- object, OAuth objects), error objects the library returned, the CLI's and the mock's parsers,
-- the mock's router (asked over HTTP), the Makefile, the file system and the headings. And the
-- other way round: what `ibkr`, a session, `ibkr.core`, ibkr-session and ibkr-mock-gateway offer
-- is documented, and every file of lua/ibkr/ is on HACKING.md's map.
--
-- Names of other projects are not read as ours: only the namespaces above are extracted, and the
-- few receivers of other libraries written with a colon (cq:loop(), uv, a luasocket c:send()) are
-- listed in EXTERNAL_RECEIVERS below. A failure lists every missing name with file:line.
local dn = require("spec.helpers.doc_names")
local mock = require("spec.helpers.mock")
local ibkr = require("ibkr")
local core = require("ibkr.core")
local args = require("ibkr.cli.args")
local mockmod = require("ibkr.mock")

---------------------------------------------------------------------------------------------
-- What is read, and how (small on purpose: each entry says why)

local FILE_OPTS = {
  -- command lines without a program name in these files are this program's
  ["docs/cli.md"] = { cli = "session" },
  ["docs/testing.md"] = { cli = "mock", aliases = { testing = "ibkr.mock.testing", mock = "ibkr.mock" } },
  -- ibkr.md names the repair's constants and the registry's functions as repair.X, kinds.X
  ["docs/ibkr.md"] = { aliases = { repair = "ibkr.repair", kinds = "ibkr.kinds" } },
  -- the reference of the real gateway cites other projects' files and names: its links only
  ["docs/gateway-facts.md"] = { external = true },
  -- reference.md names the functions of ibkr.state, ibkr.kinds, ibkr.metrics as state.X, kinds.X...
  ["docs/reference.md"] = {
    aliases = { state = "ibkr.state", kinds = "ibkr.kinds", metrics = "ibkr.metrics" },
  },
}

-- Lines of a document marked *pending* name what another branch is still building (the push
-- channel: reference.md's entries, a mention in ibkr.md and cli.md): spec/reference_spec.lua holds
-- reference.md's to their mark (it fails once the name exists), so they are not looked up here.
local PENDING = {} -- file -> { [line number] = true }
local function pending(m)
  local marks = PENDING[m.file]
  if not marks then
    marks = {}
    local ok, text = pcall(dn.read, m.file)
    local n = 0
    for line in ((ok and text or "") .. "\n"):gmatch("([^\n]*)\n") do
      n = n + 1
      if line:find("*pending*", 1, true) then marks[n] = true end
    end
    PENDING[m.file] = marks
  end
  return marks[m.line] == true
end

-- Receivers of recv:method() in the docs, and the objects they name (made below).
local RECEIVERS = {
  s = { "session" }, req = { "request" }, pollable = { "request" }, gw = { "testing_mock" },
  m = { "inprocess_mock" }, o = { "oauth_crypto" }, k = { "jwt_key" }, handle = { "driver" },
  driver = { "driver" }, st = { "stream" }, ["s._oauth"] = { "oauth_signer", "oauth2_signer" },
  p = { "proc" },
}
-- core.md's s is ibkr.core's session (it also names the ibkr session's s:request)
local FILE_RECEIVERS = { ["docs/core.md"] = { s = { "core_session", "session" } } }
local EXTERNAL_RECEIVERS = {
  cq = "a cqueues controller", uv = "luv", heartbeat = "a luv timer (docs/hosts.md)",
  c = "a luasocket socket (docs/testing.md)",
}
-- options written as a pattern of the form, not as an option
local PLACEHOLDER_OPTIONS = { ["--name"] = "docs/cli.md: options may be written --name=value" }
-- long options of other programs that the docs name on their own (in prose, not on a command line)
local EXTERNAL_OPTIONS = { ["--deps-mode"] = "luarocks", ["--tree"] = "luarocks",
  ["--lua-version"] = "luarocks" }
-- words that stand for a name in a path (spec/FILE_spec.lua)
local PATH_PLACEHOLDERS = { FILE = true, NAME = true, DIR = true, PATH = true }
-- paths of a user's project in an example, not of this checkout
local FOREIGN_PATHS = { ["spec/bot_spec.lua"] = "docs/testing.md: the user's own spec file" }

---------------------------------------------------------------------------------------------
-- The checkout

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

local function exists(path)
  if path:find("*", 1, true) then
    return sh("ls -d " .. path .. " 2>/dev/null") ~= "" -- doc paths: [%w_./*-] only
  end
  return os.rename(path, path) and true or false
end

local function documents()
  local files = { "README.md" }
  for f in sh("ls docs/*.md"):gmatch("[^\n]+") do files[#files + 1] = f end
  return files
end

local function examples()
  local files = {}
  for f in sh("find examples -type f \\( -name '*.lua' -o -name '*.c' -o -name '*.sh' \\) | sort")
      :gmatch("[^\n]+") do
    files[#files + 1] = f
  end
  return files
end

-- the project's sources (not the docs, not this spec and its helper): IBKR_* and C names are
-- looked up there
local SOURCES
local function sources()
  if not SOURCES then
    SOURCES = {}
    local list = sh("find lua src spec bin examples bench .ci Makefile -type f "
      .. "-not -path 'spec/fuzz/corpus/*' -not -name docs_names_spec.lua -not -name doc_names.lua "
      .. "\\( -name '*.lua' -o -name '*.[ch]' -o -name '*.sh' -o -name '*.in' -o -path 'bin/*' "
      .. "-o -name Makefile -o -path '.ci/*' -o -path 'spec/run' -o -path 'spec/c/*' \\)")
    for f in list:gmatch("[^\n]+") do SOURCES[f] = dn.read(f) end
  end
  return SOURCES
end

local function word_in(text, name)
  return text:find("%f[%w_]" .. name:gsub("%p", "%%%0") .. "%f[^%w_]") ~= nil
end

local MAKE_TARGETS
local function make_targets()
  if not MAKE_TARGETS then
    MAKE_TARGETS = {}
    for line in dn.read("Makefile"):gmatch("[^\n]+") do
      local targets = line:match("^([^%s#=:][^=:]*):") or line:match("^%.PHONY:(.*)$")
      if targets and not line:match("^[^:]*:=") then
        for t in targets:gmatch("%S+") do MAKE_TARGETS[t] = true end
      end
    end
  end
  return MAKE_TARGETS
end

---------------------------------------------------------------------------------------------
-- Lua names

local function index(v, k)
  local ok, r = pcall(function() return v[k] end)
  if ok then return r end
  return nil
end

local function module(name)
  if package.loaded[name] ~= nil then return package.loaded[name] end
  local ok, m = pcall(require, name)
  return ok and m or nil
end

-- from a root value, field by field
local function walk(v, dotted)
  for part in dotted:gmatch("[^.]+") do
    if type(v) ~= "table" and type(v) ~= "userdata" then return nil end
    v = index(v, part)
    if v == nil then return nil end
  end
  return v
end

-- "ibkr.a.b": a module of that name, a metatable of that name (userdata "ibkr.session"), or what
-- `local ibkr = require("ibkr")` reaches as ibkr.a.b
local function ibkr_value(name)
  local m = module(name)
  if m ~= nil then return m end
  local mt = debug.getregistry()[name]
  if type(mt) == "table" and mt.__name == name then return mt end
  return walk(ibkr, name:gsub("^ibkr%.?", ""))
end

---------------------------------------------------------------------------------------------
-- Objects the docs name, made against mock gateways (setup), and error objects they returned

local W = {} -- the world: mocks, objects, error fields

local function objects_for(recv, file)
  local kinds = (FILE_RECEIVERS[file] or {})[recv] or RECEIVERS[recv]
  if not kinds then return nil end
  local list = {}
  for _, k in ipairs(kinds) do
    if W.objects[k] ~= nil then list[#list + 1] = W.objects[k] end
  end
  return list, kinds
end

local function has_method(obj, name)
  local v = index(obj, name)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

local function error_fields(list)
  local fields = {}
  for _, e in ipairs(list) do
    assert(core.is_error(e), "not an error object: " .. tostring(e))
    for k in pairs(e) do fields[k] = true end
  end
  return fields
end

-- Errors the library returns, one of each kind that a doc may name a field of.
local function provoke_errors(plain, oauth2)
  local errs = {}
  local function call(fault, f)
    plain:reset()
    if fault then plain:fault(fault) end
    local s = plain:session{ retries = 0, pacing = false }
    errs[#errs + 1] = select(2, f(s)) -- error_fields checks that it is an error object
    s:close()
  end
  local refused = ibkr.new{ base_url = "http://127.0.0.1:1/v1/api", retries = 0 }
  errs[#errs + 1] = select(2, refused:tickle()) -- connect: curl_code
  refused:close()
  call({ path = "/tickle", kind = "status", status = 503, body = { error = "x" },
    headers = { ["Retry-After"] = "1" } }, function(s) return s:tickle() end)
  call({ path = "/tickle", kind = "redirect" }, function(s) return s:tickle() end)
  call({ path = "/tickle", kind = "malformed" }, function(s) return s:tickle() end)
  call({ path = "/tickle", kind = "drop" }, function(s) return s:tickle() end)
  call({ path = "/iserver/auth/status", kind = "error_body" }, function(s)
    local state, detail = s:health()
    return state == "ready" or nil, detail
  end)
  call({ path = "/iserver/auth/status", kind = "status", status = 500, count = 1000 }, function(s)
    return s:wait_ready{ timeout = 0.2, init = false } -- state, cause
  end)
  oauth2:oauth2_fault{ kind = "refused", error = "invalid_client" }
  local s2 = oauth2:oauth2_session{ retries = 0 }
  errs[#errs + 1] = select(2, s2:tickle())
  s2:close()
  return error_fields(errs)
end

local function build_world()
  W.plain = assert(mock.start{ tls = false, pacing = false, init_delay = 0 })
  W.oauth = assert(mock.start{ tls = false, args = { "--oauth" } })
  W.oauth2 = assert(mock.start{ tls = false, oauth2 = { key_bits = 2048 } })
  local cfg = assert(require("ibkr.oauth").read_config(W.oauth:control("GET", "/__mock/oauth").config_file))
  local o = {}
  o.session = W.plain:session{}
  o.core_session = core.new{ base_url = W.plain.url }
  o.request = assert(o.core_session:start("GET", "/tickle"))
  o.testing_mock = W.plain
  o.inprocess_mock = assert(mockmod.new{ tls = false })
  o.oauth_crypto = core.oauth.new{ signature_key_file = cfg.signature_key_file,
    encryption_key_file = cfg.encryption_key_file, access_token_secret = cfg.access_token_secret,
    dh_prime = cfg.dh_prime, dh_generator = cfg.dh_generator }
  o.jwt_key = core.oauth.jwt_key{ private_key_file = W.oauth2:oauth2().client.private_key_file }
  o.proc = assert(core.spawn{ "/bin/true" })
  local cqueues = require("cqueues")
  o.driver = require("ibkr.cqueues").drive(cqueues.new(), coroutine.create(function() end))
  o.oauth_session = ibkr.new{ base_url = W.oauth.url, oauth = cfg }
  o.oauth2_session = W.oauth2:oauth2_session{}
  o.oauth_signer, o.oauth2_signer = o.oauth_session._oauth, o.oauth2_session._oauth
  o.stream = has_method(o.session, "stream") and o.session:stream{ topics = {} } or nil
  W.objects = o
  W.sessions = { o.session, o.oauth_session, o.oauth2_session }
  W.error_fields = provoke_errors(W.plain, W.oauth2)
end

local function close_world()
  local o = W.objects or {}
  if o.stream then o.stream:close() end
  if o.driver then o.driver:stop() end
  if o.request then o.request:close() end
  for _, k in ipairs({ "core_session", "session", "oauth_session", "oauth2_session", "jwt_key",
      "oauth_crypto", "inprocess_mock", "proc" }) do
    if o[k] then o[k]:close() end
  end
  for _, k in ipairs({ "plain", "oauth", "oauth2" }) do
    if W[k] then W[k]:stop() end
  end
end

---------------------------------------------------------------------------------------------
-- The CLIs, through their own parsers

local function session_err(argv)
  local _, err = args.parse(argv)
  return err or ""
end

-- the options ibkr-mock-gateway --help lists (the first column of its option lines)
local function mock_usage_options()
  local list = {}
  for line in mockmod.usage:gmatch("[^\n]+") do
    local col = line:match("^%s+(%-.-)%s%s") or line:match("^%s+(%-%S+)$")
    for o in (col or ""):gmatch("%-%-?[%a][%w%-]*") do list[#list + 1] = o end
  end
  return list
end

local CLI = {
  session = {
    known = function(o) return not session_err({ "--help", o }):find("unknown option", 1, true) end,
    takes_value = function(o) return session_err({ "--help", o }):find("needs a value", 1, true) ~= nil end,
    all = function()
      local l = {}
      for o in pairs(args.OPTIONS) do l[#l + 1] = o end
      return l
    end,
  },
  mock = {
    known = function(o)
      local _, err = mockmod.parse_args({ o })
      return not (err or ""):find("unknown option", 1, true)
    end,
    takes_value = function(o)
      local _, err = mockmod.parse_args({ o })
      return (err or ""):find("needs a value", 1, true) ~= nil
    end,
    all = mock_usage_options,
  },
}

local function session_command(c)
  return not session_err({ "--help", c }):find("unknown command", 1, true)
end

-- whether option o may go with command c (the parser says "does not apply to" otherwise)
local function applies(c, o)
  local argv = { c }
  if c == "request" then argv[#argv + 1] = "POST"; argv[#argv + 1] = "/x" end
  argv[#argv + 1] = o
  if CLI.session.takes_value(o) then argv[#argv + 1] = "1" end
  return not session_err(argv):find("does not apply", 1, true)
end

-- option o (maybe a pattern "--oauth2-*") of program p
local function option_known(p, o)
  if PLACEHOLDER_OPTIONS[o] then return true end
  if o:find("*", 1, true) then
    local prefix = o:gsub("%*.*$", "")
    for _, k in ipairs(CLI[p].all()) do
      if k:sub(1, #prefix) == prefix then return true end
    end
    return false
  end
  return CLI[p].known(o)
end

-- Who offers option o on a line for prog ("session", "mock" or "either"): "session", "mock",
-- "external" (another program's, named in prose: EXTERNAL_OPTIONS) or nil (nobody).
local function owner(prog, o)
  if prog ~= "either" then return option_known(prog, o) and prog or nil end
  if option_known("session", o) then return "session" end
  if option_known("mock", o) then return "mock" end
  return EXTERNAL_OPTIONS[o] and "external" or nil
end

local PROGRAM = { session = "ibkr-session", mock = "ibkr-mock-gateway",
  either = "ibkr-session or ibkr-mock-gateway" }

-- whether word i of a command line is ibkr-session's command: the first plain word that is not
-- an option's value, on a line that names the program, or (elsewhere) a first word followed by
-- an option (`wait --init`)
local function command_word(m, i, prog)
  return prog ~= "mock" and m.words[i]:match("^%l[%l%-]*$") ~= nil
    and (m.explicit or (i == 1 and m.words[2] ~= nil and dn.option_of(m.words[2], false) ~= nil))
end

-- Walks one command line; returns the problems found.
local function check_cmdline(m)
  local problems, prog, command, given = {}, m.prog, nil, {}
  local i = 1
  while i <= #m.words do
    local w = m.words[i]
    local o = dn.option_of(w, m.explicit)
    if o then
      local p = owner(prog, o)
      if not p then
        problems[#problems + 1] = o .. " (no such option of " .. PROGRAM[prog] .. ")"
      elseif p ~= "external" then
        if p == "session" then given[#given + 1] = o end
        if not o:find("*", 1, true) and not w:find("=", 1, true) and CLI[p].takes_value(o) then
          i = i + 1 -- its value
        end
      end
    elseif not command and command_word(m, i, prog) then
      command, prog = w, "session"
      if not session_command(w) then problems[#problems + 1] = w .. " (no such ibkr-session command)" end
    end
    i = i + 1
  end
  if command and session_command(command) then
    for _, o in ipairs(given) do
      if not o:find("*", 1, true) and not PLACEHOLDER_OPTIONS[o] and not applies(command, o) then
        problems[#problems + 1] = o .. " (does not apply to ibkr-session " .. command .. ")"
      end
    end
  end
  return problems
end

---------------------------------------------------------------------------------------------
-- The mock's control endpoints, asked over HTTP: PATCH is no control method, so the router
-- answers 405 with an Allow header for a known path (200 for /__mock/echo, which takes any
-- method) and 404 for an unknown one

local CONTROL = {}
local function control_methods(path)
  if CONTROL[path] == nil then
    CONTROL[path] = false
    for _, gw in ipairs({ W.plain, W.oauth, W.oauth2 }) do
      local resp = assert(gw:request("PATCH", path))
      if resp.status == 200 then CONTROL[path] = "ANY"; break end
      if resp.status == 405 then CONTROL[path] = resp.headers.allow or ""; break end
    end
  end
  return CONTROL[path]
end

---------------------------------------------------------------------------------------------
-- Headings of every document (for links, "Section" references and §N)

local DOCS = {}
local function doc(path)
  if DOCS[path] == nil then
    local ok, text = pcall(dn.read, path)
    if not ok then
      DOCS[path] = false
    else
      local opts = FILE_OPTS[path] or {}
      local mentions, anchors, headings = dn.markdown(path, text, opts)
      DOCS[path] = { mentions = mentions, anchors = anchors, headings = headings }
    end
  end
  return DOCS[path] or nil
end

local function relative(file, target)
  local dir = file:match("^(.*)/[^/]*$")
  local p = dir and (dir .. "/" .. target) or target
  repeat
    local before = p
    p = p:gsub("[^/]+/%.%./", "", 1)
  until p == before
  return p
end

local function plain_title(t)
  return t:gsub("`", ""):gsub("^[%d.]+%s+", ""):lower()
end

local function find_section(path, title)
  local d = doc(path)
  if not d then return nil end
  local want = title:lower()
  for _, h in ipairs(d.headings) do
    local t = plain_title(h.text)
    if t == want or t:sub(1, #want + 1) == want .. " " or t:sub(1, #want) == want then return h end
  end
  return nil
end

local function facts_heading(number)
  for _, h in ipairs(doc("docs/gateway-facts.md").headings) do
    local n = h.text:match("^(%d[%d.]*)[.%s]")
    if n and n:gsub("%.$", "") == number then return h end
  end
  return nil
end

---------------------------------------------------------------------------------------------
-- One mention -> nil (it exists) or what is wrong

local C_PREFIXES
local function c_prefix_ours(name)
  if not C_PREFIXES then
    C_PREFIXES = {}
    for f in sh("ls src/*.c src/lib/*.c"):gmatch("[^\n]+") do
      C_PREFIXES[f:match("([^/]+)%.c$")] = true
    end
  end
  local p = name:match("^(%l+)_")
  return p and C_PREFIXES[p]
end

local function direction_ok(dir, from, to)
  return not dir or (dir == "below" and to > from) or (dir == "above" and to < from)
end

local CHECK = {}

function CHECK.ibkr(m)
  if ibkr_value(m.name) == nil then
    return "no such module or field: require(\"ibkr\")." .. m.name:gsub("^ibkr%.", "")
      .. " is nil and no module is called " .. m.name
  end
end

function CHECK.require(m)
  if module(m.name) == nil then return "no such module" end
end

function CHECK.core(m)
  if walk(core, m.name:gsub("^core%.", "")) == nil then return "require(\"ibkr.core\") has no " .. m.name end
end

function CHECK.method(m)
  local objs, kinds = objects_for(m.recv, m.file)
  if not objs then
    -- a Lua block's own local variables are its business; prose and comments name our objects
    if EXTERNAL_RECEIVERS[m.recv] or m.in_block then return nil end
    return "unknown receiver '" .. m.recv .. "': name its object in RECEIVERS (ours) or "
      .. "EXTERNAL_RECEIVERS (another library's) of spec/docs_names_spec.lua"
  end
  for _, obj in ipairs(objs) do
    if has_method(obj, m.name) then return nil end
  end
  if #objs == 0 then return "no " .. table.concat(kinds, " or ") .. " exists to have it" end
  return "no such method of " .. table.concat(kinds, " or ")
end

function CHECK.field(m)
  if m.recv == "err" then
    if not W.error_fields[m.name] then return "no error object the library returned carries it" end
    return nil
  end
  local objs = m.recv == "s" and W.sessions or objects_for(m.recv, m.file)
  for _, obj in ipairs(objs) do
    if index(obj, m.name) ~= nil then return nil end
  end
  return "no such field"
end

function CHECK.member(m)
  local v = ibkr_value(m.module)
  if v == nil then return "no module " .. m.module end
  if index(v, m.name) == nil then return m.module .. " has no " .. m.name end
end

function CHECK.cmdline(m)
  local problems = check_cmdline(m)
  if #problems > 0 then return table.concat(problems, "; ") end
end

function CHECK.control(m)
  local allowed = control_methods(m.path)
  if not allowed then return "the mock answers 404: no such control endpoint" end
  if m.method and m.method ~= "ANY" and allowed ~= "ANY" and not word_in(allowed, m.method) then
    return m.method .. " is not one of its methods (" .. allowed .. ")"
  end
end

function CHECK.make(m)
  if not make_targets()[m.name] then return "no such target in the Makefile" end
end

function CHECK.path(m)
  if FOREIGN_PATHS[m.name] then return nil end
  for word in m.name:gmatch("%u+") do
    if PATH_PLACEHOLDERS[word] then return nil end
  end
  local p = m.name
  if p:match("^ibkr/") and not p:match("%.so$") then p = "lua/" .. p end
  if not exists(p) then return "no such file or directory" end
end

function CHECK.spec(m)
  if not exists("spec/" .. m.name .. ".lua") then return "no spec/" .. m.name .. ".lua" end
end

function CHECK.env(m)
  for _, text in pairs(sources()) do
    if word_in(text, m.name) then return nil end
  end
  return "named nowhere in the sources"
end

function CHECK.cname(m)
  if m.cfile then
    local ok, text = pcall(dn.read, m.cfile)
    if not ok then return "no file " .. m.cfile end
    if not word_in(text, m.name) then return "not in " .. m.cfile end
    return nil
  end
  if m.in_c_block and not c_prefix_ours(m.name) then return nil end
  for f, text in pairs(sources()) do
    if f:match("^src/") and word_in(text, m.name) then return nil end
  end
  return "not in src/"
end

function CHECK.link(m)
  local target = m.target == "" and m.file or relative(m.file, m.target)
  if target ~= m.file and not exists(target) then return "no such file " .. target end
  if m.anchor then
    local d = doc(target)
    local line = d and d.anchors[m.anchor]
    if not line then return "no heading in " .. target .. " has the anchor #" .. m.anchor end
    if target == m.file and not direction_ok(m.direction, m.line, line) then
      return "#" .. m.anchor .. " is not " .. m.direction .. " (line " .. line .. ")"
    end
  end
end

function CHECK.section(m)
  local path = m.target and relative(m.file, m.target) or m.file
  if m.target and not exists(path) then path = m.target end
  local h = find_section(path, m.title)
  if not h then return "no section \"" .. m.title .. "\" in " .. path end
  if path == m.file and not direction_ok(m.direction, m.line, h.line) then
    return "\"" .. m.title .. "\" is not " .. m.direction .. " (line " .. h.line .. ")"
  end
end

function CHECK.facts(m)
  local h = facts_heading(m.number)
  if not h then return "docs/gateway-facts.md has no section " .. m.number end
  if m.title and not h.text:lower():find(m.title:lower(), 1, true) then
    return "§" .. m.number .. " is \"" .. h.text .. "\", not \"" .. m.title .. "\""
  end
end

local function describe_mention(m)
  if m.kind == "cmdline" then
    return (m.explicit and (m.prog == "mock" and "ibkr-mock-gateway " or "ibkr-session ") or "")
      .. table.concat(m.words, " ")
  elseif m.kind == "method" then return m.recv .. ":" .. m.name .. "()"
  elseif m.kind == "field" then return m.recv .. "." .. m.name
  elseif m.kind == "member" then return (m.alias or m.module) .. "." .. m.name
  elseif m.kind == "control" then return (m.method and (m.method .. " ") or "") .. m.path
  elseif m.kind == "make" then return "make " .. m.name
  elseif m.kind == "link" then return "(" .. m.target .. (m.anchor and ("#" .. m.anchor) or "") .. ")"
  elseif m.kind == "section" then
    return "\"" .. m.title .. "\"" .. (m.direction and (" " .. m.direction) or "")
  elseif m.kind == "facts" then return "§" .. m.number
  end
  return m.name
end

-- Checks mentions; returns the failures as "file:line: name: why" lines.
local function check(mentions, kinds)
  local out = {}
  for _, m in ipairs(mentions) do
    if (not kinds or kinds[m.kind]) and not pending(m) then
      local why = CHECK[m.kind](m)
      if why then
        out[#out + 1] = string.format("%s:%d: %s: %s", m.file, m.line, describe_mention(m), why)
      end
    end
  end
  return out
end

local function mentions_of_all()
  local all = {}
  for _, f in ipairs(documents()) do
    for _, m in ipairs(doc(f).mentions) do all[#all + 1] = m end
  end
  for _, f in ipairs(examples()) do
    for _, m in ipairs(dn.comments(f, dn.read(f))) do all[#all + 1] = m end
  end
  return all
end

local function report(failures, what)
  return #failures .. " " .. what .. ":\n  " .. table.concat(failures, "\n  ")
end

---------------------------------------------------------------------------------------------
-- The other way round: what is offered is documented

-- names `<prefix>NAME` spelled in a text (`ibkr.run`, `s:stats`, `core.poll`)
local function spelled(text, prefix, name)
  return text:find(prefix .. name .. "%f[^%w_]") ~= nil
end

local function all_docs_text()
  local t = {}
  for _, f in ipairs(documents()) do t[#t + 1] = dn.read(f) end
  return table.concat(t, "\n")
end

local function undocumented_exports(ibkr_md)
  local out = {}
  for k in pairs(ibkr) do
    if not spelled(ibkr_md, "ibkr%.", k) then out[#out + 1] = "ibkr." .. k end
  end
  table.sort(out)
  return out
end

local function undocumented_methods(text, obj, prefix, shown)
  local out = {}
  local mt = getmetatable(obj)
  local idx = type(mt) == "table" and mt.__index
  for k, v in pairs(type(idx) == "table" and idx or {}) do
    if type(k) == "string" and type(v) == "function" and not k:match("^_")
        and not spelled(text, prefix, k) then
      out[#out + 1] = shown .. k
    end
  end
  table.sort(out)
  return out
end

-- The first block of cli.md that starts with "ibkr-session": the synopsis names every option
-- and command of the parser.
local function synopsis_missing(cli_md)
  local syn = cli_md:match("```%s*\n(ibkr%-session [^`]*)```")
  if not syn then return { "docs/cli.md has no synopsis block starting with ibkr-session" } end
  local out = {}
  for o in pairs(args.OPTIONS) do
    if not syn:find(o:gsub("%p", "%%%0") .. "%f[^%w%-]") then out[#out + 1] = o end
  end
  for c in pairs(args.COMMANDS) do
    if not syn:find("%f[%w]" .. c .. "%f[^%w%-]") then out[#out + 1] = c end
  end
  table.sort(out)
  return out
end

---------------------------------------------------------------------------------------------

describe("names in the docs", function()
  setup(build_world)
  teardown(close_world)

  local GROUPS = {
    { "Lua names (ibkr.x, require, core.x, s:method, s.field, err.field, module members)",
      { ibkr = true, require = true, core = true, method = true, field = true, member = true } },
    { "ibkr-session and ibkr-mock-gateway commands and options", { cmdline = true } },
    { "mock gateway control endpoints", { control = true } },
    { "make targets, paths, spec names, IBKR_* names, C names",
      { make = true, path = true, spec = true, env = true, cname = true } },
    { "links, anchors, section references, § of docs/gateway-facts.md",
      { link = true, section = true, facts = true } },
  }
  for _, g in ipairs(GROUPS) do
    it("exist: " .. g[1], function()
      local failures = check(mentions_of_all(), g[2])
      assert(#failures == 0, report(failures, "names the docs mention do not exist"))
    end)
  end

  it("are read at all: each kind is found in the docs", function()
    local seen = {}
    for _, m in ipairs(mentions_of_all()) do seen[m.kind] = (seen[m.kind] or 0) + 1 end
    for kind in pairs(CHECK) do
      assert(seen[kind] and seen[kind] > 0, "no mention of kind " .. kind .. " was found")
    end
  end)

  it("cover what is offered: ibkr's exports are in docs/ibkr.md", function()
    local missing = undocumented_exports(dn.read("docs/ibkr.md"))
    assert(#missing == 0, report(missing, "exports of require(\"ibkr\") docs/ibkr.md does not name"))
  end)

  it("cover what is offered: every public method of a session, of ibkr.core's sessions and requests",
    function()
      local all, core_md = all_docs_text(), dn.read("docs/core.md")
      local missing = undocumented_methods(all, W.objects.session, "s:", "s:")
      for _, k in ipairs(undocumented_methods(core_md, W.objects.core_session, "s:", "core session s:")) do
        missing[#missing + 1] = k
      end
      for _, k in ipairs(undocumented_methods(core_md, W.objects.request, "req:", "req:")) do
        missing[#missing + 1] = k
      end
      for k in pairs(core) do
        if not spelled(all, "core%.", k) then missing[#missing + 1] = "core." .. k end
      end
      assert(#missing == 0, report(missing, "methods or functions no document names"))
    end)

  it("cover what is offered: ibkr-session's synopsis and ibkr-mock-gateway's options", function()
    local missing = synopsis_missing(dn.read("docs/cli.md"))
    local testing_md = dn.read("docs/testing.md")
    for _, o in ipairs(mock_usage_options()) do
      if not spelled(testing_md, "", (o:gsub("%p", "%%%0"))) then
        missing[#missing + 1] = "ibkr-mock-gateway " .. o
      end
    end
    assert(#missing == 0, report(missing, "options or commands missing from docs/cli.md's synopsis "
      .. "or docs/testing.md"))
  end)

  it("cover what is offered: every file of lua/ibkr/ is on HACKING.md's map", function()
    local hacking, missing = dn.read("docs/HACKING.md"), {}
    for f in sh("find lua/ibkr -name '*.lua' | sort"):gmatch("[^\n]+") do
      local base, dir = f:match("([^/]+)$"), f:match("^lua/ibkr/(.*/)[^/]*$")
      local named = spelled(hacking, "%f[%w_]", (base:gsub("%p", "%%%0")))
      if not (named or (dir and hacking:find(dir, 1, true))) then
        missing[#missing + 1] = f
      end
    end
    assert(#missing == 0, report(missing, "files docs/HACKING.md's layout does not name"))
  end)

  -- The checker itself: faults of the kind, as they were once written in the docs, are found.
  describe("the checker finds", function()
    -- the failures of text as if it were file (its own headings for its anchors and sections)
    local function failures_of(file, text)
      local saved = DOCS[file]
      local mentions, anchors, headings = dn.markdown(file, text, FILE_OPTS[file])
      DOCS[file] = { mentions = mentions, anchors = anchors, headings = headings }
      local ok, f = pcall(check, mentions)
      DOCS[file] = saved
      assert(ok, f)
      return f
    end
    local function finds(file, text, what)
      local f = failures_of(file, text)
      assert(#f > 0, "not found: " .. text)
      assert(table.concat(f, "\n"):find(what, 1, true), "found something else: " .. table.concat(f, "\n"))
    end

    it("a field the ibkr module does not have (ibkr.state.judge, ibkr.pacing.MARGIN)", function()
      finds("docs/ibkr.md", "`ibkr.state.judge(endpoint, body)` → `ok, why`", "ibkr.state.judge")
      finds("docs/ibkr.md", "wider than the limit (`ibkr.pacing.MARGIN`)", "ibkr.pacing.MARGIN")
      assert.same({}, failures_of("docs/ibkr.md", "`require(\"ibkr.state\").judge(endpoint, body)`"))
    end)

    it("a method of ibkr.core's session named on the ibkr session (json.md's s:perform)", function()
      finds("docs/json.md", "A table `body` of `s:request`, `s:perform` and `s:start`", "s:perform()")
      assert.same({}, failures_of("docs/core.md", "- `s:perform(method, path [, opts])`"))
    end)

    it("an export missing from ibkr.md (empty_array, array_mt)", function()
      local missing = undocumented_exports("Also exported: `ibkr._VERSION`, `ibkr.null`")
      assert.is_true(table.concat(missing, " "):find("ibkr.empty_array", 1, true) ~= nil)
      assert.is_true(table.concat(missing, " "):find("ibkr.array_mt", 1, true) ~= nil)
    end)

    it("an option the synopsis lacks (--oauth-config)", function()
      local missing = synopsis_missing("```\nibkr-session [--url URL] [--json] COMMAND\n```\n")
      assert.is_true(table.concat(missing, " "):find("--oauth-config", 1, true) ~= nil)
    end)

    it("unknown commands, options and options given to the wrong command", function()
      finds("docs/cli.md", "```sh\nibkr-session wiat --init\n```\n", "wiat (no such ibkr-session command)")
      finds("docs/cli.md", "```sh\nibkr-session keepalive --intervall 5\n```\n", "--intervall")
      finds("docs/cli.md", "`status --compete`", "does not apply to ibkr-session status")
      finds("docs/testing.md", "`--idle-timout S`", "--idle-timout")
      finds("docs/oauth.md", "```\nibkr-mock-gateway --oauth2-key-size N\n```\n", "--oauth2-key-size")
    end)

    it("a control endpoint or method the mock does not have", function()
      finds("docs/testing.md", "**`GET /__mock/faults`**", "/__mock/faults")
      finds("docs/testing.md", "**`PUT /__mock/state`**", "PUT is not one of its methods")
    end)

    it("a section that is above when the text says below, a dead anchor, a missing heading", function()
      local text = "# Doc\n## The CLI\ntext\n## Mock\nthe CLI's format ([below](#the-cli)); "
        .. "see \"Mock\" below; see \"Nothing\"; [x](#nope)\n"
      local f = table.concat(failures_of("docs/x.md", text), "\n")
      assert.is_truthy(f:find("#the-cli is not below", 1, true), f)
      assert.is_truthy(f:find("\"Mock\" is not below", 1, true), f)
      assert.is_truthy(f:find("no section \"Nothing\"", 1, true), f)
      assert.is_truthy(f:find("anchor #nope", 1, true), f)
    end)

    it("files, targets, specs, IBKR_* names, error fields and receivers that do not exist", function()
      finds("docs/HACKING.md", "`examples/c_host/Makefile`", "examples/c_host/Makefile")
      finds("docs/HACKING.md", "`make distcheck`", "make distcheck")
      finds("docs/HACKING.md", "| `cli_args_spec` |", "no spec/cli_args_spec.lua")
      finds("docs/HACKING.md", "`IBKR_" .. "NO_SUCH`", "named nowhere")
      finds("docs/ibkr.md", "`err.reason`", "err.reason")
      finds("docs/ibkr.md", "`st:no_such_method(topic)`", "st:no_such_method()")
      finds("docs/ibkr.md", "`x:frobnicate()`", "unknown receiver 'x'")
      finds("docs/json.md", "by `message_explain` (src/message.c)", "not in src/message.c")
      finds("docs/ibkr.md", "(§9.9)", "no section 9.9")
    end)
  end)

  -- ...and not what belongs to others or stands for a name
  describe("the checker leaves alone", function()
    local function clean(file, text)
      local saved = DOCS[file]
      DOCS[file] = nil
      local f = check((dn.markdown(file, text, FILE_OPTS[file])))
      DOCS[file] = saved
      assert.same({}, f)
    end

    it("other programs, libraries and hosts", function()
      clean("README.md", "talks to `https://api.ibkr.com/v1/api`; `luarocks make --deps-mode=none` "
        .. "(`--deps-mode=none`, `--tree=DIR`); `cqueues.poll(req)`, `uv.new_poll`, `cq:loop()`")
      clean("docs/hosts.md",
        "```sh\nmkdir -p build && cc -o build/c_host x.c $(pkg-config --cflags lua5.4)\n```\n")
      clean("docs/core.md", "core.c's mods[] and `src/core.c`; `openssl s_client -connect gw:5000 > gw.pem`")
    end)

    it("placeholders and a Lua block's own variables", function()
      clean("docs/HACKING.md", "`spec/run --filter=... spec/FILE_spec.lua`; a method `req:<name>()`")
      clean("docs/testing.md", "```lua\nlocal req = session_core:start(\"POST\", \"/tickle\")\n```\n")
      clean("docs/cli.md", "Options may be written `--name=value`.")
    end)
  end)
end)
