/*
** proc.c -- child processes that a program watches without blocking (the
** --on-change command of ibkr-session keepalive). core.spawn starts a program
** in a process group of its own, stdin on /dev/null, stdout and stderr on
** non-blocking pipes, and returns a process object that is a pollable
** (cqueues' convention): its :pollfd() becomes readable when output, an end
** of output or the process's exit is there. Linux: the descriptor is an epoll
** set of the two pipes and a pidfd (pidfd_open, Linux 5.3); on an older kernel
** :timeout() asks to be looked at every 50 ms while the process runs.
**
**   core.spawn(argv [, env]) -> proc | nil, message
**     argv   list of strings; argv[1] is the program's path (execve: no PATH search)
**     env    table name -> string (set) or false (unset), over this process's environment
**   proc:pid()          the process id, which is also its process group's id
**   proc:read([max])    -> out, err, open: at most max (default 65536) bytes read now from
**                          each pipe ("" when nothing is there), and whether one is still open
**   proc:wait([peek])   -> nil while it runs; "exit", code or "signal", number once it ended.
**                          Reaps it, unless peek: then it stays a zombie, so the process group's
**                          id cannot be taken by another process while :kill may still use it
**   proc:kill([name])   -> true, or nil, message: "TERM" (default), "KILL", "INT" or "HUP" to the
**                          whole process group; refused once the process is reaped
**   proc:pollfd(), proc:events() ("r"), proc:timeout() (seconds or nil)
**   proc:close([name])  closes the descriptors; a process not reaped yet gets SIGKILL (or the
**                          signal named) sent to its group, and is reaped when already gone,
**                          else by the next spawn, wait, close, collection or core.poll after
**                          it ended (never a zombie left); also __gc and __close (SIGKILL)
** A failed execve shows as exit code 127 with a line on the process's stderr,
** as a shell does: the parent never waits for the child to reach execve.
** Between fork and execve the child calls only async-signal-safe functions
** (the parent has other threads: libcurl's engine).
** Adds to the module: core.spawn, the "ibkr.proc" class.
** Called by: core.c (luaopen; core.poll reaps released children).
** Calls: nothing of ours.
*/
#define _GNU_SOURCE                   /* syscall(), NSIG: beyond plain POSIX */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"

#include "ibkr.h"

#ifndef NSIG
#define NSIG 65                       /* Linux's; sigaction refuses what is beyond */
#endif

#define PROC_MT "ibkr.proc"
#define PROC_READ_MAX 65536
#define PROC_POLL 0.05                /* seconds between looks without a pidfd */

extern char **environ;

typedef struct {
  pid_t pid;                          /* 0 before the fork */
  int out, err;                       /* read ends of the pipes, -1 once closed */
  int ep;                             /* epoll set, -1 once closed */
  int pidfd;                          /* -1: none (old kernel) or closed */
  int reaped;                         /* waitpid collected it */
  int ended;                          /* it ended (reaped or seen with peek) */
  int status;                         /* its wait status, once ended */
  int unknown;                        /* someone else reaped it: no status */
} proc;

static proc *toproc(lua_State *L) { return (proc *)luaL_checkudata(L, 1, PROC_MT); }

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* ------------------------------------------------------------ the child */

static void child_say(const char *a, const char *b, const char *c) {
  ssize_t r = write(2, a, strlen(a));
  r = write(2, b, strlen(b));
  r = write(2, c, strlen(c));
  (void)r;
}

/* why execve failed, in words (strerror is not async-signal-safe) */
static const char *child_why(int e) {
  switch (e) {
    case ENOENT: return ": no such file\n";
    case EACCES: return ": permission denied\n";
    case ENOEXEC: return ": not an executable\n";
    case E2BIG: return ": the arguments and environment are too long (E2BIG)\n";
    case ENAMETOOLONG: return ": the path is too long\n";
    case ENOTDIR: return ": a component of the path is not a directory\n";
    case ELOOP: return ": too many symbolic links in the path\n";
    case ETXTBSY: return ": the file is open for writing\n";
    case ENOMEM: return ": out of memory\n";
    default: return ": execve failed\n";
  }
}

/* every descriptor from 3 up is closed: the child keeps none of ours (listening sockets...) */
static void child_close_from(int maxfd) {
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 3u, ~0u, 0u) == 0) return;
#endif
  for (int fd = 3; fd < maxfd; fd++) close(fd);
}

/* default dispositions, nothing blocked, the group, the pipes; never returns */
static void child_exec(char **argv, char **envp, int devnull, int out, int err, int maxfd) {
  struct sigaction sa;
  sigset_t none;
  int e;
  setpgid(0, 0);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_DFL;
  sigemptyset(&sa.sa_mask);
  for (int s = 1; s < NSIG; s++) sigaction(s, &sa, NULL);   /* fails harmlessly for some */
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  /* first out of the way of 0, 1, 2 (a parent without them gave such numbers to the pipes) */
  devnull = fcntl(devnull, F_DUPFD, 3);
  out = fcntl(out, F_DUPFD, 3);
  err = fcntl(err, F_DUPFD, 3);
  if (devnull < 0 || out < 0 || err < 0 || dup2(devnull, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
    _exit(127);
  child_close_from(maxfd);
  execve(argv[0], argv, envp);
  e = errno;
  child_say("ibkr: cannot execute ", argv[0], child_why(e));
  _exit(127);
}

/* ------------------------------------------------------------ arguments */

/* argv as a NULL-terminated array in a userdata (freed by the GC whatever happens) */
static char **build_argv(lua_State *L) {
  lua_Integer n;
  char **a;
  luaL_checktype(L, 1, LUA_TTABLE);
  n = luaL_len(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 4096, 1, "argv must list 1 to 4096 strings");
  a = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    const char *s;
    if (lua_geti(L, 1, i) != LUA_TSTRING) luaL_argerror(L, 1, "argv must list strings");
    s = lua_tolstring(L, -1, &len);
    luaL_argcheck(L, strlen(s) == len, 1, "argv strings must not contain NUL");
    a[i - 1] = (char *)s;             /* the table holds the string */
    lua_pop(L, 1);
  }
  a[n] = NULL;
  return a;
}

/* whether environ entry e names a variable the env table (at index 2) sets or unsets */
static int env_overridden(lua_State *L, const char *e) {
  const char *eq = strchr(e, '=');
  int t;
  if (eq == NULL || lua_isnoneornil(L, 2)) return 0;
  lua_pushlstring(L, e, (size_t)(eq - e));
  t = lua_rawget(L, 2);
  lua_pop(L, 1);
  return t != LUA_TNIL;
}

/* checks one env entry (name at -2, value at -1) and pushes "NAME=value", or nothing for false */
static int env_entry(lua_State *L) {
  size_t nlen, vlen;
  const char *name, *value;
  if (lua_type(L, -2) != LUA_TSTRING) luaL_argerror(L, 2, "env names must be strings");
  name = lua_tolstring(L, -2, &nlen);
  luaL_argcheck(L, nlen > 0 && strlen(name) == nlen && strchr(name, '=') == NULL, 2,
                "env names must be non-empty, without '=' or NUL");
  if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) return 0;
  if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, 2, "env values must be strings or false");
  value = lua_tolstring(L, -1, &vlen);
  luaL_argcheck(L, strlen(value) == vlen, 2, "env values must not contain NUL");
  lua_pushfstring(L, "%s=%s", name, value);
  return 1;
}

/* the environment: environ minus what env names, plus env's strings; the new strings are kept
** in a table pushed below the array */
static char **build_envp(lua_State *L) {
  size_t n = 0, k = 0;
  char **a;
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_newtable(L);                              /* keep */
  if (!lua_isnoneornil(L, 2)) {
    lua_pushnil(L);
    while (lua_next(L, 2)) {                    /* keep, name, value */
      if (env_entry(L)) lua_rawseti(L, -4, (lua_Integer)++k);
      lua_pop(L, 1);
    }
  }
  while (environ[n]) n++;
  a = lua_newuserdatauv(L, sizeof(char *) * (n + k + 1), 0);   /* keep, array */
  n = 0;
  for (size_t i = 0; environ[i]; i++)
    if (!env_overridden(L, environ[i])) a[n++] = environ[i];
  for (size_t i = 1; i <= k; i++) {
    lua_rawgeti(L, -2, (lua_Integer)i);
    a[n++] = (char *)lua_tostring(L, -1);       /* held by keep */
    lua_pop(L, 1);
  }
  a[n] = NULL;
  return a;
}

/* ------------------------------------------------------------ reaping later */

/* children released (closed or collected) before they ended: they were sent a signal, and each
** is reaped (waitpid WNOHANG) by every later spawn, wait, close or collection, so none stays a
** zombie and nothing waits for it to die. Process-wide (pids are), so guarded by a mutex. */
static pthread_mutex_t pending_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t *pending;
static size_t pending_n, pending_cap;

/* reaps the pending children that ended (or that someone else reaped); also core.poll's */
void proc_reap_pending(void) {
  size_t k = 0;
  pthread_mutex_lock(&pending_lock);
  if (pending_n == 0) {
    pthread_mutex_unlock(&pending_lock);
    return;
  }
  for (size_t i = 0; i < pending_n; i++) {
    int status;
    pid_t r = waitpid(pending[i], &status, WNOHANG);
    if (r == 0 || (r < 0 && errno == EINTR)) pending[k++] = pending[i];    /* still running */
  }
  pending_n = k;
  if (k == 0 && pending_cap > 0) {              /* nothing pending: nothing held */
    free(pending);
    pending = NULL;
    pending_cap = 0;
  }
  pthread_mutex_unlock(&pending_lock);
}

/* hands a child that still runs to the later reaping; 0 when there is no memory for it */
static int proc_defer(pid_t pid) {
  int ok = 1;
  pthread_mutex_lock(&pending_lock);
  if (pending_n == pending_cap) {
    size_t cap = pending_cap ? pending_cap * 2 : 16;
    pid_t *grown = realloc(pending, cap * sizeof *grown);
    if (grown) {
      pending = grown;
      pending_cap = cap;
    }
  }
  if (pending_n < pending_cap) pending[pending_n++] = pid;
  else ok = 0;
  pthread_mutex_unlock(&pending_lock);
  return ok;
}

/* ------------------------------------------------------------ spawning */

/* closes the descriptors; a process not reaped gets signo (its group) and is reaped if gone */
static void proc_release(proc *p, int signo) {
  close_fd(&p->out);
  close_fd(&p->err);
  close_fd(&p->pidfd);
  close_fd(&p->ep);
  if (p->pid > 0 && !p->reaped) {
    int status;
    pid_t r;
    kill(-p->pid, signo);
    r = waitpid(p->pid, &status, WNOHANG);
    /* still running (the signal takes a moment, or it ignores TERM): reaped later; without
    ** memory for that, only a KILL is waited for (it ends at once) */
    if (r == 0 && !proc_defer(p->pid) && signo == SIGKILL) waitpid(p->pid, &status, 0);
    p->reaped = 1;                              /* not ours to signal again either way */
  }
  proc_reap_pending();
}


static int proc_watch(int ep, int fd) {
  struct epoll_event ev;
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

static int fail_errno(lua_State *L, const char *what) {
  int e = errno;
  lua_pushnil(L);
  lua_pushfstring(L, "spawn: %s: %s", what, strerror(e));
  return 2;
}

/* the parent's half after the fork: its ends of the pipes, the epoll set */
static int parent_setup(proc *p, int out[2], int err[2]) {
  close_fd(&out[1]);
  close_fd(&err[1]);
  p->out = out[0];
  p->err = err[0];
  setpgid(p->pid, p->pid);                      /* the child does it too: no race with kill */
  if (fcntl(p->out, F_SETFL, O_NONBLOCK) != 0 || fcntl(p->err, F_SETFL, O_NONBLOCK) != 0) return 0;
  p->ep = epoll_create1(EPOLL_CLOEXEC);
  if (p->ep < 0 || proc_watch(p->ep, p->out) != 0 || proc_watch(p->ep, p->err) != 0) return 0;
#ifdef SYS_pidfd_open
  p->pidfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
  if (p->pidfd >= 0) {
    fcntl(p->pidfd, F_SETFD, FD_CLOEXEC);
    if (proc_watch(p->ep, p->pidfd) != 0) close_fd(&p->pidfd);
  }
#endif
  return 1;
}

/* a pipe whose ends are closed on exec (pipe2 is GNU; the child closes all but 0-2 anyway) */
static int cloexec_pipe(int fd[2]) {
  if (pipe(fd) != 0) return 0;
  fcntl(fd[0], F_SETFD, FD_CLOEXEC);
  fcntl(fd[1], F_SETFD, FD_CLOEXEC);
  return 1;
}

static int max_fd(void) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY || r.rlim_cur > 65536) return 65536;
  return (int)r.rlim_cur;
}

static int proc_spawn(lua_State *L) {
  char **argv, **envp;
  int out[2] = { -1, -1 }, err[2] = { -1, -1 }, devnull, maxfd = max_fd();
  proc *p;
  lua_settop(L, 2);                             /* argv, env (or nil) */
  proc_reap_pending();
  argv = build_argv(L);                         /* argv, env, a */
  envp = build_envp(L);                         /* argv, env, a, keep, e */
  p = lua_newuserdatauv(L, sizeof(proc), 0);
  memset(p, 0, sizeof *p);
  p->out = p->err = p->ep = p->pidfd = -1;
  luaL_setmetatable(L, PROC_MT);                /* argv, env, a, keep, e, proc */
  if (!cloexec_pipe(out)) return fail_errno(L, "pipe");
  if (!cloexec_pipe(err)) {
    close_fd(&out[0]);
    close_fd(&out[1]);
    return fail_errno(L, "pipe");
  }
  devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull >= 0) p->pid = fork();
  if (devnull < 0 || p->pid < 0) {
    int e = errno;
    close_fd(&out[0]); close_fd(&out[1]); close_fd(&err[0]); close_fd(&err[1]);
    if (devnull >= 0) close(devnull);
    p->pid = 0;
    errno = e;
    return fail_errno(L, devnull < 0 ? "/dev/null" : "fork");
  }
  if (p->pid == 0) child_exec(argv, envp, devnull, out[1], err[1], maxfd);
  close(devnull);
  if (!parent_setup(p, out, err)) {
    int e = errno;
    close_fd(&out[1]);
    close_fd(&err[1]);
    proc_release(p, SIGKILL);                   /* kills and reaps it */
    errno = e;
    return fail_errno(L, "epoll");
  }
  return 1;
}

/* ------------------------------------------------------------ the process object */

static int proc_pid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)toproc(L)->pid);
  return 1;
}

/* reads what is there from *fd into b (at most max); closes *fd at EOF or on an error */
static void read_pipe(lua_State *L, int *fd, size_t max) {
  luaL_Buffer b;
  size_t got = 0;
  luaL_buffinit(L, &b);
  while (*fd >= 0 && got < max) {
    size_t want = max - got < LUAL_BUFFERSIZE ? max - got : LUAL_BUFFERSIZE;
    ssize_t r = read(*fd, luaL_prepbuffsize(&b, want), want);
    if (r > 0) {
      luaL_addsize(&b, (size_t)r);
      got += (size_t)r;
    } else if (r < 0 && errno == EINTR) {
      continue;
    } else {
      if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) close_fd(fd);
      break;
    }
  }
  luaL_pushresult(&b);
}

static int proc_read(lua_State *L) {
  proc *p = toproc(L);
  lua_Integer max = luaL_optinteger(L, 2, PROC_READ_MAX);
  luaL_argcheck(L, max > 0 && max <= 16 * 1024 * 1024, 2, "max must be 1 to 16 MiB");
  read_pipe(L, &p->out, (size_t)max);
  read_pipe(L, &p->err, (size_t)max);
  lua_pushboolean(L, p->out >= 0 || p->err >= 0);
  return 3;
}

static int push_status(lua_State *L, int status) {
  if (WIFSIGNALED(status)) {
    lua_pushliteral(L, "signal");
    lua_pushinteger(L, WTERMSIG(status));
  } else {
    lua_pushliteral(L, "exit");
    lua_pushinteger(L, WEXITSTATUS(status));
  }
  return 2;
}

/* the process has ended: the pidfd has nothing more to say (and would stay readable) */
static void forget_pidfd(proc *p) {
  if (p->pidfd >= 0 && p->ep >= 0) epoll_ctl(p->ep, EPOLL_CTL_DEL, p->pidfd, NULL);
  close_fd(&p->pidfd);
}

/* looks (waitid, not blocking) whether it ended; peek leaves it a zombie */
static void proc_look(proc *p, int peek) {
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | (peek ? WNOWAIT : 0)) != 0) {
    if (errno != ECHILD) return;
    p->unknown = 1;                             /* reaped by someone else (SIGCHLD ignored) */
  } else if (si.si_pid == 0) {
    return;                                     /* still running */
  } else {
    p->status = si.si_code == CLD_EXITED ? (si.si_status & 0xff) << 8 : (si.si_status & 0x7f);
  }
  p->ended = 1;
  p->reaped = p->reaped || !peek || p->unknown;
  forget_pidfd(p);
}

static int proc_wait(lua_State *L) {
  proc *p = toproc(L);
  int peek = lua_toboolean(L, 2);
  if (p->pid <= 0) return luaL_error(L, "wait: the process was never started");
  proc_reap_pending();
  if (!p->ended || (!peek && !p->reaped)) proc_look(p, peek);
  if (!p->ended) return 0;
  if (p->unknown) {
    lua_pushliteral(L, "unknown");
    return 1;
  }
  return push_status(L, p->status);
}

static const struct { const char *name; int signo; } proc_signals[] = {
  { "TERM", SIGTERM }, { "KILL", SIGKILL }, { "INT", SIGINT }, { "HUP", SIGHUP }, { NULL, 0 }
};

/* the signal named by argument i (default def) */
static int signal_arg(lua_State *L, int i, const char *def) {
  const char *name = luaL_optstring(L, i, def);
  for (int k = 0; proc_signals[k].name; k++)
    if (strcmp(proc_signals[k].name, name) == 0) return proc_signals[k].signo;
  return luaL_argerror(L, i, "signal must be \"TERM\", \"KILL\", \"INT\" or \"HUP\"");
}

static int proc_kill(lua_State *L) {
  proc *p = toproc(L);
  int signo = signal_arg(L, 2, "TERM");
  if (p->pid <= 0 || p->reaped) {
    lua_pushnil(L);
    lua_pushliteral(L, "kill: the process is reaped: its group id may belong to another");
    return 2;
  }
  if (kill(-p->pid, signo) != 0 && errno != ESRCH) return fail_errno(L, "kill");
  lua_pushboolean(L, 1);
  return 1;
}

static int proc_pollfd(lua_State *L) {
  proc *p = toproc(L);
  if (p->ep < 0) return 0;
  lua_pushinteger(L, p->ep);
  return 1;
}

static int proc_events(lua_State *L) {
  (void)toproc(L);
  lua_pushliteral(L, "r");
  return 1;
}

static int proc_timeout(lua_State *L) {
  proc *p = toproc(L);
  if (p->ended || p->pid <= 0 || p->pidfd >= 0) return 0;
  lua_pushnumber(L, PROC_POLL);
  return 1;
}

static int proc_close(lua_State *L) {
  proc *p = toproc(L);
  proc_release(p, signal_arg(L, 2, "KILL"));
  return 0;
}

/* __gc and __close (whose second argument is an error, not a signal) */
static int proc_gc(lua_State *L) {
  proc_release(toproc(L), SIGKILL);
  return 0;
}

static int proc_tostring(lua_State *L) {
  proc *p = toproc(L);
  lua_pushfstring(L, "ibkr.proc (pid %d%s)", (int)p->pid, p->ended ? ", ended" : "");
  return 1;
}

static const luaL_Reg proc_meth[] = {
  {"pid", proc_pid},
  {"read", proc_read},
  {"wait", proc_wait},
  {"kill", proc_kill},
  {"pollfd", proc_pollfd},
  {"events", proc_events},
  {"timeout", proc_timeout},
  {"close", proc_close},
  {NULL, NULL}
};

static const luaL_Reg proc_metameth[] = {
  {"__gc", proc_gc},
#if LUA_VERSION_NUM >= 504
  {"__close", proc_gc},
#endif
  {"__tostring", proc_tostring},
  {NULL, NULL}
};

/* registers the class and core.spawn with the module on the top of the stack */
int proc_open(lua_State *L) {
  ibkr_createmeta(L, PROC_MT, proc_meth, proc_metameth);
  lua_pushcfunction(L, proc_spawn);
  lua_setfield(L, -2, "spawn");
  return 0;
}
