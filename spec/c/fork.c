/*
** fork.c BASE_URL [handshake DELAY] -- fork() with sessions open and requests in flight.
**
** The parent opens two sessions (HTTP keep-alive connection made, one request in flight on the
** engine thread), then forks. The child must refuse work on the parent's sessions (kind
** "closed"), see their request in flight end as "closed", free them without touching their
** connections, and work with a session of its own (a new engine thread). The parent then finishes
** its request and keeps using its connection, which the child never wrote to. Exit 0 when all held.
** Mode "handshake": a fresh process starts six requests (over HTTPS: its first TLS handshakes, on
** the engine thread), sleeps DELAY seconds and forks: the engine parks outside libcurl and OpenSSL
** first, else the child inherits their locks held and its own new session hangs for ever (the
** child runs under alarm(): a hang ends it with SIGALRM). The parent's six requests must succeed.
**   cc -o build/fork spec/c/fork.c $(pkg-config --cflags --libs lua5.4)
*/
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

static const char before[] =
  "local url = ...\n"
  "package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path\n"
  "package.cpath = './?.so;' .. package.cpath\n"
  "local core = require('ibkr.core')\n"
  "S = core.new{ base_url = url }\n"
  "assert(S:perform('POST', '/tickle', {repeatable = true}))\n"
  "REQ = assert(S:start('POST', '/iserver/auth/status', {repeatable = true}))\n"
  "URL = url\n";

/* mode "handshake": the process's first TLS work runs on the engine thread when fork() comes */
static const char hs_before[] =
  "local url, delay = ...\n"
  "package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path\n"
  "package.cpath = './?.so;' .. package.cpath\n"
  "local core = require('ibkr.core')\n"
  "URL = url\n"
  "T = core.new{ base_url = url }\n"
  "INFLIGHT = {}\n"
  "for k = 1, 6 do INFLIGHT[k] = assert(T:start('POST', '/iserver/auth/status')) end\n"
  "core.sleep(tonumber(delay))\n";

static const char hs_after[] =
  "for k = 1, 6 do assert(INFLIGHT[k]:wait(10)); assert(INFLIGHT[k]:result()) end\n"
  "T:close()\n";

static const char child[] =
  "local core = require('ibkr.core')\n"
  "local r, err = S:perform('POST', '/tickle', {repeatable = true})\n"
  "assert(r == nil and err.kind == 'closed', 'the parent session answered in the child')\n"
  "assert(REQ:wait(5), 'the request of the parent never ended in the child')\n"
  "local r2, err2 = REQ:result()\n"
  "assert(r2 == nil and err2.kind == 'closed', 'the request of the parent gave ' .. tostring(err2))\n"
  "S:close()\n"
  "local own = core.new{ base_url = URL }\n"
  "assert(own:perform('POST', '/tickle', {repeatable = true}))\n"
  "local req = assert(own:start('GET', '/sso/validate'))\n"
  "assert(req:wait(5)); assert(req:result())\n"
  "own:close()\n"
  "local late = core.new{ base_url = URL }\n"
  "local reqs = {}\n"
  "for k = 1, 3 do reqs[k] = assert(late:start('POST', '/iserver/auth/status')) end\n"
  "for k = 1, 3 do assert(reqs[k]:wait(10), 'a request of the child never ended'); assert(reqs[k]:result()) end\n"
  "late:close()\n";

static const char hs_child[] =
  "local core = require('ibkr.core')\n"
  "local own = core.new{ base_url = URL }\n"
  "local req = assert(own:start('POST', '/iserver/auth/status'))\n"
  "assert(req:wait(10), 'the request of the child never ended'); assert(req:result())\n"
  "assert(own:perform('POST', '/tickle'))\n"
  "own:close()\n";

static const char after[] =
  "assert(REQ:wait(5)); assert(REQ:result())\n"
  "local before = S:info().connects\n"
  "for _ = 1, 3 do assert(S:perform('POST', '/tickle', {repeatable = true})) end\n"
  "local now = S:info().connects\n"
  "assert(now == before, 'the parent lost its connection: ' .. (now - before) .. ' new connects')\n"
  "S:close()\n";

static int run(lua_State *L, const char *chunk, const char *name, int nargs) {
  int base = lua_gettop(L) - nargs;
  if (luaL_loadbuffer(L, chunk, strlen(chunk), name) != LUA_OK) goto fail;
  lua_insert(L, base + 1);
  if (lua_pcall(L, nargs, 0, 0) != LUA_OK) goto fail;
  return 1;
fail:
  fprintf(stderr, "%s: %s\n", name, lua_tostring(L, -1));
  return 0;
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  pid_t pid;
  int st = 0, hs = argc > 3 && strcmp(argv[2], "handshake") == 0;
  if (argc < 2) return 64;
  luaL_openlibs(L);
  lua_pushstring(L, argv[1]);
  if (hs) lua_pushstring(L, argv[3]);
  if (!run(L, hs ? hs_before : before, "=before", hs ? 2 : 1)) return 1;
  fflush(NULL);
  pid = fork();
  if (pid < 0) return 1;
  if (pid == 0) {
    alarm(15);
    _exit(run(L, hs ? hs_child : child, "=child", 0) ? 0 : 1);
  }
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "fork: the child failed (status %d%s)\n", st,
            WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM ? ": hung, ended by alarm" : "");
    return 1;
  }
  if (!run(L, hs ? hs_after : after, "=after", 0)) return 1;
  lua_close(L);
  puts("fork: ok");
  return 0;
}
