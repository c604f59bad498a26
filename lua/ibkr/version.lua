-- The version of lua-ibkr: the one place it is written. ibkr._VERSION, ibkr.core._VERSION (from
-- src/ibkr.h, which the Makefile and spec/package_spec.lua keep equal), the mock, the CLI, the
-- rockspec's name and the Makefile all follow it; spec/package_spec.lua checks every mention.
return "0.1.0"
