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
BUSTED     = $(LUA) /usr/bin/busted --ignore-lua

.PHONY: all test lint deps clean help

all: $(MODULE)

$(MODULE): $(SRCS) $(HDRS)
	@mkdir -p ibkr
	$(CC) $(ALL_CFLAGS) -shared -o $@ $(SRCS) $(LIBS) $(LDFLAGS)

lint: $(MODULE)
	luacheck --no-color lua spec bin examples bench

test: deps $(MODULE) lint
	$(BUSTED) -o utfTerminal

clean:
	rm -rf ibkr lua_modules build src/*.o

# ---- memory, fuzzing, threads (make check) ---------------------------------

# ---- benchmarks (make bench) -------------------------------------------------

# ---- demo and examples (make demo) -------------------------------------------
