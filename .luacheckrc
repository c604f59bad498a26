std = "lua54"
max_line_length = 110
files["spec/**/*_spec.lua"] = { std = "+busted" }
exclude_files = { "lua_modules/**", ".luarocks/**", "build/**" }
