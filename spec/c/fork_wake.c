/*
** fork_wake.c BASE_URL -- a waiter in a fork()ed child wakes at once on a request of the parent.
**
** The parent makes a session whose warm lane keeps a connection, then starts two requests the
** gateway holds (the spec sets a long delay on /tickle): one stepped in the lane on this thread
** (its pollfd a duplicate of the lane's socket), one on the engine thread (its pollfd the
** completion descriptor). Then it forks. In the child both requests ended the moment it began:
** both descriptors must be readable at once, and both requests report kind "closed". Exit 0 when
** all held.
**   cc -o build/fork_wake spec/c/fork_wake.c $(pkg-config --cflags --libs lua5.4)
*/
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

static const char before[] =
  "local url = ...\n"
  "package.cpath = './?.so;' .. package.cpath\n"
  "local core = require('ibkr.core')\n"
  "S = core.new{ base_url = url, timeout = 60 }\n"
  "assert(S:perform('POST', '/iserver/auth/status', {repeatable = true}))\n"
  "LANE = assert(S:start('POST', '/tickle', {repeatable = true}))\n"
  "ENGINE = assert(S:start('POST', '/tickle'))\n"
  "assert(not LANE:done() and not ENGINE:done(), 'the gateway did not hold /tickle')\n"
  "FDS = { LANE:pollfd(), ENGINE:pollfd() }\n"
  "assert(FDS[1] >= 0 and FDS[2] >= 0 and FDS[1] ~= FDS[2], 'no descriptors to wait on')\n";

static const char child[] =
  "local core = require('ibkr.core')\n"
  "for i, name in ipairs{ 'the lane request', 'the engine request' } do\n"
  "  assert(core.poll({ FDS[i] }, 5) == 1, name .. \"'s descriptor did not wake the child's waiter\")\n"
  "end\n"
  "for i, req in ipairs{ LANE, ENGINE } do\n"
  "  assert(req:done(), 'request ' .. i .. ' of the parent is not over in the child')\n"
  "  local r, err = req:result()\n"
  "  assert(r == nil and err.kind == 'closed', 'request ' .. i .. ' gave ' .. tostring(err))\n"
  "end\n";

static int run(lua_State *L, const char *chunk, const char *name, int nargs) {
  int base = lua_gettop(L) - nargs;
  if (luaL_loadbuffer(L, chunk, strlen(chunk), name) != LUA_OK || (lua_insert(L, base + 1),
      lua_pcall(L, nargs, 0, 0) != LUA_OK)) {
    fprintf(stderr, "%s: %s\n", name, lua_tostring(L, -1));
    return 0;
  }
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  pid_t pid;
  int st = 0;
  if (argc < 2) return 64;
  luaL_openlibs(L);
  lua_pushstring(L, argv[1]);
  if (!run(L, before, "=before", 1)) return 1;
  fflush(NULL);
  pid = fork();
  if (pid < 0) return 1;
  if (pid == 0) {
    alarm(15);
    _exit(run(L, child, "=child", 0) ? 0 : 1);
  }
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "fork_wake: the child failed (status %d)\n", st);
    return 1;
  }
  lua_close(L);
  puts("fork_wake: ok");
  return 0;
}
