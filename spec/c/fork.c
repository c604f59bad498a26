/*
** fork.c URL MOCK_PID OWN_URL -- fork() with sessions open and a request in flight.
** fork.c URL handshake DELAY  -- fork() while the engine thread runs the first TLS handshakes.
**
** The parent opens a session to the mock gateway at URL (its keep-alive connection made), stops
** that mock (SIGSTOP, MOCK_PID, and waits until the kernel shows it stopped), starts a request on
** the session -- which is then in flight on the engine thread for certain: nobody can answer it --
** and forks. The child must refuse work on the parent's session (kind "closed"), see its request
** in flight end as "closed", free it without touching its connection, and work with sessions of
** its own (a new engine thread) against the other mock at OWN_URL. Then the parent resumes the
** mock (SIGCONT), finishes its request and keeps using its connection, which the child never
** wrote to. Exit 0 when all held.
** Mode "handshake": a fresh process starts six requests (over HTTPS: its first TLS handshakes, on
** the engine thread), sleeps DELAY seconds and forks: the engine parks outside libcurl and OpenSSL
** first, else the child inherits their locks held and its own new session hangs for ever (the
** child runs under alarm(): a hang ends it with SIGALRM). The parent's six requests must succeed.
** Every DELAY must pass: it only varies what the engine is doing at fork().
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
  "local url, pid, own = ...\n"
  "package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path\n"
  "package.cpath = './?.so;' .. package.cpath\n"
  "local core = require('ibkr.core')\n"
  "S = core.new{ base_url = url }\n"
  "assert(S:perform('POST', '/tickle', {repeatable = true}))\n"
  "MOCK = pid\n"
  "local function state()\n"
  "  local f = assert(io.open('/proc/' .. pid .. '/stat'))\n"
  "  local st = f:read('l'):match('^%d+ %b() (%a)')\n"
  "  f:close()\n"
  "  return st\n"
  "end\n"
  "assert(os.execute('kill -STOP ' .. pid))\n"
  "while state() ~= 'T' do core.sleep(0.001) end\n"
  "REQ = assert(S:start('POST', '/iserver/auth/status', {repeatable = true}))\n"
  "URL = own\n";

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
  "assert(os.execute('kill -CONT ' .. MOCK))\n"
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
  int st = 0, i, hs = argc > 3 && strcmp(argv[2], "handshake") == 0;
  if (argc < 4) return 64;
  luaL_openlibs(L);
  lua_pushstring(L, argv[1]);
  for (i = hs ? 3 : 2; i < 4; i++) lua_pushstring(L, argv[i]);
  if (!run(L, hs ? hs_before : before, "=before", hs ? 2 : 3)) return 1;
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
