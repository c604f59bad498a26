/*
** oom.c BASE_URL -- out of memory inside a call never leaves the session busy or broken.
**
** A lua_State whose allocator can be told to fail from its Nth allocation on makes calls of one
** ibkr.core session (perform, and start/wait/result) with N = 1, 2, 3, ... until a call gets
** through, so that every Lua allocation of a call (reading the arguments, the request object,
** building the result) fails once. After each attempt, whatever it returned or raised (only "not
** enough memory" may be raised), allocation works again and the same session must answer calls
** at once, with no request left in flight. Prints a summary; exit 0 when all held.
**   cc -o build/oom spec/c/oom.c $(pkg-config --cflags --libs lua5.4)
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

static long count, fail_from = -1;     /* allocations since armed; fail from this one on */

static void *capped(void *ud, void *p, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(p);
    return NULL;
  }
  if (fail_from >= 0 && nsize > (p ? osize : 0) && ++count >= fail_from) return NULL;
  return realloc(p, nsize);
}

static const char setup[] =
  "local url = ...\n"
  "package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path\n"
  "package.cpath = './?.so;' .. package.cpath\n"
  "local core = require('ibkr.core')\n"
  "S = core.new{ base_url = url }\n"
  "CALLS = {\n"
  "  function() return S:perform('POST', '/iserver/auth/status', { query = { a = { 'x', 'y' } } }) end,\n"
  "  function()\n"
  "    local req = S:start('GET', '/sso/validate', { headers = { ['X-A'] = 'b' } })\n"
  "    req:wait(10)\n"
  "    return req:result()\n"
  "  end,\n"
  "}\n"
  "function CHECK()\n"
  "  collectgarbage(); collectgarbage()\n"
  "  assert(not S:busy(), 'a request left in flight')\n"
  "  assert(S:perform('POST', '/tickle'))\n"
  "  assert(CALLS[2]())\n"
  "end\n";

int main(int argc, char **argv) {
  lua_State *L = lua_newstate(capped, NULL);
  long oom = 0, failed = 0, ok = 0;
  if (argc < 2 || L == NULL) return 64;
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, setup, sizeof setup - 1, "=setup") || (lua_pushstring(L, argv[1]),
      lua_pcall(L, 1, 0, 0))) {
    fprintf(stderr, "setup: %s\n", lua_tostring(L, -1));
    return 1;
  }
  for (int call = 1; call <= 2; call++) {
    for (long n = 1; n < 100000; n++) {
      int rc, hit;
      lua_gc(L, LUA_GCCOLLECT);
      lua_getglobal(L, "CALLS");
      lua_rawgeti(L, -1, call);
      lua_remove(L, -2);
      count = 0;
      fail_from = n;
      rc = lua_pcall(L, 0, 1, 0);
      hit = count >= n;
      fail_from = -1;
      if (rc == LUA_ERRMEM) oom++;
      else if (rc != LUA_OK) {
        fprintf(stderr, "call %d, allocation %ld: raised %s\n", call, n, lua_tostring(L, -1));
        failed++;
      } else if (!lua_isnil(L, -1)) ok++;
      lua_pop(L, 1);
      lua_getglobal(L, "CHECK");
      if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        fprintf(stderr, "call %d, allocation %ld: afterwards %s\n", call, n, lua_tostring(L, -1));
        lua_pop(L, 1);
        failed++;
      }
      if (!hit) break;                       /* the call made fewer than n allocations: done */
    }
  }
  printf("oom: %ld calls out of memory, %ld answered, %ld failures\n", oom, ok, failed);
  lua_close(L);
  return failed ? 1 : 0;
}
