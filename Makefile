# lua-ibkr -- build, test and check. `make help` lists the targets.
LUA       ?= lua5.4
CC        ?= cc
CFLAGS    ?= -O2 -g
PKGS       = lua5.4 libcurl
DEFS       = -D_POSIX_C_SOURCE=200809L
WARN       = -Wall -Wextra -Werror
ALL_CFLAGS = -std=c99 -fPIC -fvisibility=hidden $(WARN) $(DEFS) $(CFLAGS) \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null || echo -I/usr/include/lua5.4)
LIBS       = -lcurl -pthread -lm
SRCS       = src/core.c src/request.c src/decode.c src/error.c
HDRS       = src/ibkr.h
MODULE     = ibkr/core.so
ROCKSPEC   = rockspec/ibkr-web-api-0.1.0-1.rockspec
TREE      ?= lua_modules

# Debian 12 packages: what the tests need, and what checks/benchmarks add.
DEPS       = gcc make pkg-config openssl lua5.4 liblua5.4-dev libcurl4-openssl-dev lua-cjson \
             luarocks lua-busted lua-check lua-socket lua-sec lua-luv lua-cqueues
DEPS_CHECK = valgrind clang libclang-rt-14-dev
DEPS_BENCH = nginx-light

.PHONY: all deps deps-check deps-bench test lint install clean help

all: $(MODULE)

$(MODULE): $(SRCS) $(HDRS)
	@mkdir -p ibkr
	$(CC) $(ALL_CFLAGS) -shared -o $@ $(SRCS) $(LIBS) $(LDFLAGS)

# Installs missing Debian packages when run as root; otherwise says what to install.
deps:
	@.ci/deps $(DEPS)
deps-check:
	@.ci/deps $(DEPS) $(DEPS_CHECK)
deps-bench:
	@.ci/deps $(DEPS) $(DEPS_BENCH)

lint: $(MODULE)
	luacheck --no-color -q lua spec bin/* examples bench

test: deps $(MODULE) lint
	spec/run

# luarocks make into $(TREE) (default ./lua_modules), offline: Debian provides lua-cjson.
install: deps
	luarocks --lua-version=5.4 --tree=$(TREE) make --deps-mode=none $(ROCKSPEC)

clean:
	rm -rf ibkr lua_modules build src/*.o

help:
	@echo "make          build ibkr/core.so in the tree"
	@echo "make demo     run the keep-alive against the bundled mock gateway (watch it repair the session)"
	@echo "make test     install missing packages (as root), build, luacheck, run the busted suite"
	@echo "make install  luarocks make into ./lua_modules (TREE=... to change)"
	@echo "make check    test + sanitizers + valgrind + fuzz smoke + threads"
	@echo "make bench    benchmarks against raw libcurl and luasocket (nginx fake gateway)"

# ---- memory, fuzzing, threads (make check) ---------------------------------

# ---- benchmarks (make bench) -------------------------------------------------

# ---- demo and examples (make demo) -------------------------------------------
