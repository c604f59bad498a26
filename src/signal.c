/*
** signal.c -- catching SIGINT/SIGTERM for programs that must end promptly
** (ibkr-session keepalive): a handler that only records the signal, and a
** wait that returns early when one arrives.
**
** The handler is async-signal-safe: it stores the signal number in a
** volatile sig_atomic_t and writes one byte to a non-blocking self-pipe
** (write(2) is async-signal-safe; errno is preserved). A wait polls the
** pipe's read end, so a signal that arrives on any thread, or just before
** the wait began, still ends the wait at once. Functions:
**   core.signal_catch{"INT", "TERM", ...}  install the handler (idempotent)
**   core.signal_caught()                   name of the first caught signal, or nil
**   core.signal_wait(seconds [, fd])       sleep until the time passed, a caught
**                                          signal arrived, or fd became readable;
**                                          returns the caught signal's name or nil
**   core.signal_fd()                       the self-pipe's read end (readable once a signal
**                                          was caught), or nil before signal_catch: for
**                                          waits on many descriptors (core.poll)
**
** And, for every wait of the module (core.sleep, core.signal_wait, blocking
** exchanges, req:wait): whether a signal handler of someone else asked the
** Lua state to stop meanwhile (signal_mark, signal_asked). The standalone
** lua5.4 handles SIGINT by setting a hook on the main thread that raises
** "interrupted!" at the next Lua instruction; a wait in C must return to Lua
** for it to act, so it ends early when the signal interrupted it and a hook
** appeared (any other signal leaves it waiting).
** Adds to the module: core.signal_catch, core.signal_caught, core.signal_wait,
** core.signal_fd.
** Called by: core.c, session.c, request.c.
** Calls: nothing of ours.
*/
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ibkr.h"

static volatile sig_atomic_t caught_signo = 0;
static int sigpipe_fd[2] = { -1, -1 };
static pthread_once_t pipe_once = PTHREAD_ONCE_INIT;

static const struct { const char *name; int signo; } signames[] = {
  { "INT", SIGINT }, { "TERM", SIGTERM }, { "HUP", SIGHUP }, { "QUIT", SIGQUIT },
  { "USR1", SIGUSR1 }, { "USR2", SIGUSR2 }, { NULL, 0 }
};

static const char *signame(int signo) {
  for (int i = 0; signames[i].name; i++)
    if (signames[i].signo == signo) return signames[i].name;
  return NULL;
}

static void on_signal(int signo) {
  int saved = errno;
  if (caught_signo == 0) caught_signo = signo;
  if (sigpipe_fd[1] >= 0) {
    ssize_t r = write(sigpipe_fd[1], "s", 1);   /* full pipe: a wake-up is pending anyway */
    (void)r;
  }
  errno = saved;
}

static void make_pipe(void) {
  int fd[2];
  if (pipe(fd) != 0) return;
  for (int i = 0; i < 2; i++) {
    fcntl(fd[i], F_SETFL, fcntl(fd[i], F_GETFL) | O_NONBLOCK);
    fcntl(fd[i], F_SETFD, FD_CLOEXEC);
  }
  sigpipe_fd[0] = fd[0];
  sigpipe_fd[1] = fd[1];
}

/* core.signal_catch(names): every name is installed or none is (a bad name raises first) */
static int signal_catch(lua_State *L) {
  int signos[16], n = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  for (lua_Integer i = 1;; i++) {
    int j, signo = 0;
    const char *name;
    if (lua_geti(L, 1, i) == LUA_TNIL) { lua_pop(L, 1); break; }
    if (n == 16) return luaL_argerror(L, 1, "at most 16 signal names");
    name = luaL_checkstring(L, -1);
    for (j = 0; signames[j].name; j++)
      if (strcmp(signames[j].name, name) == 0) signo = signames[j].signo;
    if (!signo) return luaL_error(L, "signal_catch: unknown signal '%s'", name);
    lua_pop(L, 1);
    signos[n++] = signo;
  }
  pthread_once(&pipe_once, make_pipe);
  if (sigpipe_fd[0] < 0) return luaL_error(L, "signal_catch: cannot create a pipe");
  for (int k = 0; k < n; k++) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;   /* libcurl's system calls carry on; waits poll the pipe */
    if (sigaction(signos[k], &sa, NULL) != 0)
      return luaL_error(L, "signal_catch: %s", strerror(errno));
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int push_caught(lua_State *L) {
  int signo = caught_signo;
  if (signo == 0) lua_pushnil(L);
  else lua_pushstring(L, signame(signo));
  return 1;
}

static int signal_caught(lua_State *L) {
  return push_caught(L);
}

static double now_mono(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* the hooks of L and of its main thread before a wait: nothing but a signal
** handler (or another OS thread) can change them while this thread waits */
void signal_mark(lua_State *L, sigmark *m) {
  m->L = L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  m->main = lua_tothread(L, -1);
  lua_pop(L, 1);
  m->hook = lua_gethook(L);
  m->mask = lua_gethookmask(L);
  m->mhook = lua_gethook(m->main);
  m->mmask = lua_gethookmask(m->main);
}

/* whether a hook was set since the mark (a transfer_stopfn) */
int signal_asked(void *ud) {
  const sigmark *m = ud;
  return lua_gethook(m->L) != m->hook || lua_gethookmask(m->L) != m->mask ||
         lua_gethook(m->main) != m->mhook || lua_gethookmask(m->main) != m->mmask;
}

/* core.signal_wait(seconds [, fd]): poll on the self-pipe (and fd), the
** timeout rounded up to whole milliseconds, resumed after EINTR until the
** time is up (or a hook asks Lua to stop: see above) */
static int signal_wait(lua_State *L) {
  double secs = luaL_checknumber(L, 1);
  int fd = lua_isnoneornil(L, 2) ? -1 : ibkr_checkfd(L, 2, luaL_checkinteger(L, 2));
  double end;
  sigmark mark;
  signal_mark(L, &mark);
  if (secs != secs || secs < 0) secs = 0;
  if (secs > 1e9) secs = 1e9;
  end = now_mono() + secs;
  while (caught_signo == 0) {
    struct pollfd p[2];
    int np = 0, r;
    double left = end - now_mono(), ms;
    if (left <= 0) break;
    ms = ceil(left * 1000);
    if (ms > 3600000) ms = 3600000;             /* an hour per poll: fits an int */
    if (sigpipe_fd[0] >= 0) { p[np].fd = sigpipe_fd[0]; p[np].events = POLLIN; np++; }
    if (fd >= 0) { p[np].fd = fd; p[np].events = POLLIN; np++; }
    r = poll(p, (nfds_t)np, (int)ms);
    if (r < 0 && (errno != EINTR || signal_asked(&mark))) break;
    if (r > 0 && fd >= 0 && p[np - 1].revents) break;
  }
  if (caught_signo != 0 && sigpipe_fd[0] >= 0) {
    char drain[64];
    while (read(sigpipe_fd[0], drain, sizeof drain) > 0) {}
  }
  return push_caught(L);
}

static int signal_fd(lua_State *L) {
  if (sigpipe_fd[0] < 0) return 0;
  lua_pushinteger(L, sigpipe_fd[0]);
  return 1;
}

static const luaL_Reg signal_funcs[] = {
  {"signal_catch", signal_catch},
  {"signal_caught", signal_caught},
  {"signal_wait", signal_wait},
  {"signal_fd", signal_fd},
  {NULL, NULL}
};

/* adds the functions to the module table on the top of the stack */
int signal_open(lua_State *L) {
  luaL_setfuncs(L, signal_funcs, 0);
  return 0;
}
