-- ibkr.config_file: the files of ibkr-session's --oauth-config and --oauth2-config (docs/oauth.md):
-- one `name = value` per line (blanks around `=` optional, the value runs to the end of the line,
-- trailing blanks dropped), `#` starts a comment line, blank lines are ignored. The file must be
-- private to its owner, like a key file: the C module reads it (core.oauth.read_private) and
-- refuses it when group or others may read or write it.

local core = require("ibkr.core")

local M = {}

-- Reads `path`. kinds: name -> "string", "file" (a path; relative ones are relative to the
-- file's directory) or "integer". what: the file's name in messages ("oauth config").
-- Returns the values by name; or nil and a message naming the file (and FILE:LINE for a
-- malformed line or an unknown name). Never shows a value.
function M.read(path, kinds, what)
  local text, why = core.oauth.read_private(path)
  if not text then return nil, what .. " " .. why end
  local values = {}
  local dir = path:match("^(.*)/[^/]*$") or "."
  local n = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    line = line:gsub("\r$", "")
    if not line:match("^%s*$") and not line:match("^%s*#") then
      local k, v = line:match("^%s*([%w_]+)%s*=%s*(.-)%s*$")
      if not k then return nil, string.format("%s:%d: expected 'name = value'", path, n) end
      local kind = kinds[k]
      if not kind then return nil, string.format("%s:%d: unknown name '%s'", path, n, k) end
      if kind == "integer" then
        v = math.tointeger(tonumber(v))
        if not v then return nil, string.format("%s:%d: '%s' must be an integer", path, n, k) end
      elseif kind == "file" and v:sub(1, 1) ~= "/" then
        v = dir .. "/" .. v
      end
      values[k] = v
    end
  end
  return values
end

-- The loaders of one OAuth option's file: read_config(path) -> the option's table and the file's
-- `base_url` (or nil), or nil, message; cli_apply(opts, path) sets opts[option] from the file, and
-- opts.base_url when the command line gave none, and returns nil or a message (a usage error).
-- kinds as for M.read, with base_url = "string" among them.
function M.loaders(option, kinds, what)
  local function read_config(path)
    local cfg, err = M.read(path, kinds, what)
    if not cfg then return nil, err end
    local base_url = cfg.base_url
    cfg.base_url = nil
    return cfg, base_url
  end
  local function cli_apply(opts, path)
    local cfg, base_url = read_config(path)
    if not cfg then return base_url end
    opts[option] = cfg
    if opts.base_url == nil then opts.base_url = base_url end
    return nil
  end
  return read_config, cli_apply
end

return M
