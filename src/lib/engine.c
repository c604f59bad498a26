/*
** engine.c -- the engine thread: one for the whole process, driving the
** lanes that hold exchanges for it -- a session's warm lane lent to it for
** an exchange that needs a new connection, a session's far lane for every
** other non-blocking exchange, a websocket's own far lane for its connect
** -- and making each exchange's completion descriptor readable when it
** ends; and ending the connections handed over to it (a closed websocket's:
** it waits a little for the peer to end them, then frees them here, where
** the 1-2 ms of a verified TLS connection's close hold up no host). Also
** the process-wide duties that come
** with a thread: libcurl's global init, stopping the thread at exit(), and
** parking it around fork(), after which the parent's exchanges have ended
** in the child and every descriptor a waiter may watch is readable there.
**
** Why a thread: one curl_multi_socket_action can take milliseconds of CPU
** (a TLS handshake under OpenSSL 3 costs 1-3 ms), and a host's resume must
** stay under 1 ms. Why one: a thread per request or per session does not
** scale to a thousand kept-alive sessions. Why the sessions' own lanes and
** not one multi handle of its own: a session's connections must close with
** the session, and a multi handle's connection cache cannot close those of
** one session alone. The engine thread never touches a lua_State or a
** session: only xfers, the lanes it drives, and the connections handed
** over to it.
** Called by: core.c, session.c, lib/transfer.c, lib/wsconn.c.
** Calls: lib/lane.c, lib/conn.c.
** Lua-free, like every file in src/lib/.
*/
#define _GNU_SOURCE                  /* dladdr */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

#include "clock.h"
#include "conn.h"
#include "engine.h"
#include "lane.h"

/* a connection handed over to be ended here (engine_retire): its handle,
** the multi handle it lives in, its socket (watched until the peer ends the
** connection) and when to stop waiting for that */
typedef struct retired {
  struct retired *next;
  CURL *easy;
  CURLM *multi;
  curl_socket_t fd;
  double until;
  int slot;                   /* its place in waitfd during the engine's wait, or 0: not watched */
} retired;

static struct engine {
  pthread_mutex_t mu;         /* guards everything up to `watched`, and every submitted xfer's state */
  pthread_cond_t cv;          /* a cancel was handled; the engine parked or was let go */
  pthread_t th;
  int running, stopping;
  int park, parked;           /* fork(): asked to wait outside libcurl; waiting so */
  xfer *addq, *cancelq;
  retired *retireq;           /* handed over, not yet taken */
  unsigned gen;               /* bumped in a forked child: older xfers are dead there */
  int wake[2];                /* a write to wake[1] ends the engine's wait (the same eventfd on Linux) */
  xfer *watched;              /* every xfer holding a descriptor a waiter may watch */
  int ready;                  /* a descriptor always readable (made once) */
  /* the engine thread's alone: the lanes it drives, and their sockets as it
  ** polls them (waitfd[0] is wake[0]); waitlane[i] is the lane of waitfd[i] */
  lane *lanes;
  retired *lingering;         /* connections waiting for their peer to end them */
  struct pollfd *waitfd;
  lane **waitlane;
  int waitcap;
} engine = {
  .mu = PTHREAD_MUTEX_INITIALIZER,
  .cv = PTHREAD_COND_INITIALIZER,
  .gen = 1,
  .wake = { -1, -1 },
  .ready = -1,
};

/* ------------------------------------------------------------ descriptors */

/* a non-blocking, close-on-exec eventfd (a pipe elsewhere): fd[0] is read
** (polled), fd[1] written; initially readable when `set` */
static int make_event(int fd[2], int set) {
#ifdef __linux__
  fd[0] = fd[1] = eventfd(set ? 1 : 0, EFD_CLOEXEC | EFD_NONBLOCK);
  return fd[0] >= 0;
#else
  if (pipe(fd) != 0) return 0;
  for (int i = 0; i < 2; i++) {
    fcntl(fd[i], F_SETFD, FD_CLOEXEC);
    fcntl(fd[i], F_SETFL, O_NONBLOCK);
  }
  if (set && write(fd[1], "", 1) != 1) return 0;
  return 1;
#endif
}

/* makes an event's read end readable */
static void signal_event(int rfd, int wfd) {
  uint64_t one = 1;
  ssize_t w = write(wfd, &one, wfd == rfd ? sizeof one : 1);
  (void)w;
}

static void wake(void) {
  if (engine.wake[1] >= 0) signal_event(engine.wake[0], engine.wake[1]);
}

/* under engine.mu: the xfer is finished; its completion fd becomes
** readable. Written before `state`, so the fd is still open when it is
** written. */
static void mark_done(xfer *x) {
  if (x->wfd >= 0) signal_event(x->efd, x->wfd);
  x->state = X_DONE;
}

/* an always-readable descriptor: what a waiter watches once its exchange
** ended somewhere without a completion descriptor of its own */
int engine_ready_fd(void) {
  return engine.ready;
}

/* under engine.mu: x joins the list of exchanges holding a descriptor a
** waiter may watch (efd made, or a lane socket's duplicate handed out):
** after a fork(), the child makes each readable */
static void watch(xfer *x) {
  if (x->watched) return;
  x->wprev = NULL;
  x->wnext = engine.watched;
  if (engine.watched) engine.watched->wprev = x;
  engine.watched = x;
  x->watched = 1;
}

void engine_watch(xfer *x) {
  pthread_mutex_lock(&engine.mu);
  watch(x);
  pthread_mutex_unlock(&engine.mu);
}

void engine_unwatch(xfer *x) {
  pthread_mutex_lock(&engine.mu);
  if (x->watched) {
    if (x->wprev) x->wprev->wnext = x->wnext;
    else engine.watched = x->wnext;
    if (x->wnext) x->wnext->wprev = x->wprev;
    x->wprev = x->wnext = NULL;
    x->watched = 0;
  }
  pthread_mutex_unlock(&engine.mu);
}

/* ------------------------------------------------------------ lanes */

/* x's lane, while it runs on the engine */
static lane *lane_of(xfer *x) {
  return x->lane == LANE_LENT ? &x->home->warm : &x->home->far;
}

/* under engine.mu: x joins its lane, which the engine drives while it
** holds an exchange */
static void lane_join(xfer *x) {
  lane *l = lane_of(x);
  if (!lane_add(l, x, 0)) {
    x->code = CURLE_FAILED_INIT;
    mark_done(x);
    return;
  }
  x->state = X_RUNNING;
  if (l->running++ == 0) {
    l->next = engine.lanes;
    engine.lanes = l;
  }
}

/* under engine.mu: an exchange of lane l is over; with none left the engine
** lets the lane go (back to its session: a lent warm lane, an idle far lane) */
static void lane_leave(lane *l) {
  lane **p = &engine.lanes;
  if (--l->running > 0) return;
  while (*p && *p != l) p = &(*p)->next;
  if (*p) *p = l->next;
  l->next = NULL;
}

/* under engine.mu: attach the queued xfers, take back the cancelled ones */
static void engine_take(void) {
  while (engine.addq) {
    xfer *x = engine.addq;
    engine.addq = x->qnext;
    x->qnext = NULL;
    lane_join(x);
  }
  while (engine.cancelq) {
    xfer *x = engine.cancelq;
    engine.cancelq = x->qnext;
    x->qnext = NULL;
    if (x->state == X_RUNNING) {
      lane *l = lane_of(x);
      lane_drop(l, x);
      lane_leave(l);
      x->code = CURLE_ABORTED_BY_CALLBACK;
      mark_done(x);
    }
    x->cancel = 0;
  }
  while (engine.retireq) {
    retired *r = engine.retireq;
    engine.retireq = r->next;
    r->next = engine.lingering;
    engine.lingering = r;
  }
  pthread_cond_broadcast(&engine.cv);
}

/* room for `need` entries in waitfd and waitlane; 0 when out of memory */
static int wait_room(int need) {
  if (need <= engine.waitcap) return 1;
  int cap = need * 2;
  struct pollfd *p = realloc(engine.waitfd, sizeof *p * (size_t)cap);
  lane **q = p ? realloc(engine.waitlane, sizeof *q * (size_t)cap) : NULL;
  if (p) engine.waitfd = p;
  if (q) engine.waitlane = q, engine.waitcap = cap;
  return q != NULL;
}

/* the wake-up descriptor, every socket of the lanes driven and of the
** lingering connections, into waitfd (waitlane says whose: NULL for a
** lingering one); returns how many; *ms lowered to the earliest timer */
static int lanes_fds(int *ms) {
  int n = 1;
  double now = clock_now();
  engine.waitfd[0] = (struct pollfd){ .fd = engine.wake[0], .events = POLLIN };
  for (lane *l = engine.lanes; l; l = l->next) {
    if (!wait_room(n + l->nsock)) {           /* out of memory: look again soon */
      *ms = 1;
      break;
    }
    for (int k = lane_pollfds(l, engine.waitfd + n, l->nsock); k > 0; k--) engine.waitlane[n++] = l;
    *ms = lane_ms(l, now, *ms);
  }
  for (retired *r = engine.lingering; r; r = r->next) {
    double left = (r->until - now) * 1000;
    r->slot = 0;
    if (r->fd != CURL_SOCKET_BAD && wait_room(n + 1)) {
      engine.waitfd[n] = (struct pollfd){ .fd = r->fd, .events = POLLIN };
      engine.waitlane[n] = NULL;
      r->slot = n++;
    }
    if (left < *ms) *ms = left <= 0 ? 0 : (int)left + 1;
  }
  return n;
}

/* after the wait: libcurl acts in each lane driven; the exchanges that
** ended there are done (a lane left without one goes back to its session) */
static void lanes_run(int n) {
  int k = 1;
  lane *next;
  for (lane *l = engine.lanes; l; l = next) {
    int first = k;
    xfer *x, *ended = NULL;
    next = l->next;
    while (k < n && engine.waitlane[k] == l) k++;
    lane_act(l, engine.waitfd + first, k - first);
    while ((x = lane_collect(l)) != NULL) {
      x->dnext = ended;
      ended = x;
    }
    if (ended == NULL) continue;
    pthread_mutex_lock(&engine.mu);
    for (; ended; ended = x) {
      x = ended->dnext;
      ended->dnext = NULL;
      lane_leave(l);
      mark_done(ended);                       /* the last touch of it, and of l when it left */
    }
    pthread_mutex_unlock(&engine.mu);
  }
}

/* whether r's peer ended the connection: what arrived is read and dropped
** (a close frame's echo), until the end of the stream or an error; a peer
** that keeps sending is cut off at the deadline */
static int peer_ended(retired *r) {
  char buf[16384];
  for (int i = 0; i < 16; i++) {
    size_t got = 0;
    CURLcode rc = curl_easy_recv(r->easy, buf, sizeof buf, &got);
    if (rc == CURLE_AGAIN) return 0;
    if (rc != CURLE_OK || got == 0) return 1;
  }
  return 0;
}

/* after the wait: each lingering connection whose peer ended it, or whose
** time is up, is freed (its TLS state, a verified one's CA store) */
static void linger_run(int n) {
  double now = clock_now();
  for (retired **p = &engine.lingering; *p;) {
    retired *r = *p;
    int seen = r->slot > 0 && r->slot < n && engine.waitfd[r->slot].revents;
    if ((seen && peer_ended(r)) || now >= r->until || r->fd == CURL_SOCKET_BAD) {
      *p = r->next;
      curl_easy_cleanup(r->easy);
      if (r->multi) curl_multi_cleanup(r->multi);
      free(r);
    } else {
      p = &r->next;
    }
  }
}

/* ------------------------------------------------------------ the thread */

/* under engine.mu: a fork() is under way; wait, outside libcurl and
** OpenSSL (whose locks the child would inherit held), until the parent
** goes on */
static void engine_park(void) {
  engine.parked = 1;
  pthread_cond_broadcast(&engine.cv);
  while (engine.park && !engine.stopping) pthread_cond_wait(&engine.cv, &engine.mu);
  engine.parked = 0;
}

/* wait for the lanes' sockets, their timers or a wake-up */
static int engine_wait(void) {
  int ms = 1000, n = lanes_fds(&ms);
  if (poll(engine.waitfd, (nfds_t)n, ms) > 0 && engine.waitfd[0].revents) {
    uint64_t drain;
    while (read(engine.wake[0], &drain, sizeof drain) > 0) {}
  }
  return n;
}

static void *engine_main(void *ud) {
  (void)ud;
  pthread_mutex_lock(&engine.mu);
  while (!engine.stopping) {
    int n;
    if (engine.park) {
      engine_park();
      continue;
    }
    engine_take();
    pthread_mutex_unlock(&engine.mu);
    n = engine_wait();
    lanes_run(n);
    linger_run(n);
    pthread_mutex_lock(&engine.mu);
  }
  engine.running = 0;
  for (xfer *x = engine.cancelq; x; x = x->qnext) x->cancel = 0;
  engine.cancelq = NULL;
  pthread_cond_broadcast(&engine.cv);
  pthread_mutex_unlock(&engine.mu);
  return NULL;
}

/* under engine.mu. The engine blocks every signal: the host's handlers keep
** running on the host's threads. */
static int engine_start(void) {
  sigset_t all, old;
  int rc;
  if (engine.running) return 1;
  if (engine.stopping) return 0;
  if (engine.wake[0] < 0 && !make_event(engine.wake, 0)) return 0;
  if (engine.waitfd == NULL) {
    engine.waitfd = malloc(sizeof *engine.waitfd * 64);
    engine.waitlane = malloc(sizeof *engine.waitlane * 64);
    if (engine.waitfd == NULL || engine.waitlane == NULL) return 0;
    engine.waitcap = 64;
  }
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&engine.th, NULL, engine_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) return 0;
  engine.running = 1;
  return 1;
}

/*
** Runs at exit() (and when the module is unloaded): stop the engine before
** libcrypto's own atexit handler frees what a live TLS transfer uses. It is
** registered after curl_global_init, so it runs before OpenSSL's handler.
** Waiters on other threads are not woken: the process is ending, and a
** waiter that went on would run libcurl while OpenSSL is torn down.
*/
static void engine_atexit(void) {
  int joined;
  pthread_mutex_lock(&engine.mu);
  engine.stopping = 1;
  joined = engine.running;
  pthread_mutex_unlock(&engine.mu);
  if (!joined) return;
  wake();
  pthread_join(engine.th, NULL);
}

/* fork(): the child has no engine thread. Xfers of the parent stay dead in
** the child (their generation is old), sessions of the parent refuse work
** there and are freed without touching their curl handles, whose sockets
** and TLS state the parent still uses. Before the fork the engine thread is
** parked at the top of its loop: were it inside libcurl, OpenSSL's locks
** (held by a TLS handshake) would stay held for ever in the child. */
static void fork_prepare(void) {
  pthread_mutex_lock(&engine.mu);
  if (!engine.running || pthread_equal(pthread_self(), engine.th)) return;
  engine.park = 1;
  pthread_mutex_unlock(&engine.mu);
  wake();
  pthread_mutex_lock(&engine.mu);
  while (engine.running && !engine.parked) pthread_cond_wait(&engine.cv, &engine.mu);
}
static void fork_parent(void) {
  engine.park = 0;
  pthread_cond_broadcast(&engine.cv);
  pthread_mutex_unlock(&engine.mu);
}
/* In the child every exchange of the parent has ended: each descriptor a
** waiter may watch becomes the always-readable one (in the child's
** descriptor table only), so a waiter wakes at once and finds it ended. */
static void fork_child(void) {
  pthread_mutex_init(&engine.mu, NULL);
  pthread_cond_init(&engine.cv, NULL);
  engine.running = engine.stopping = engine.park = engine.parked = 0;
  engine.addq = engine.cancelq = NULL;
  engine.lanes = NULL;
  engine.retireq = engine.lingering = NULL;   /* the parent's connections: never touched here */
  engine.gen++;
  for (xfer *x = engine.watched; x && engine.ready >= 0; x = x->wnext) {
    if (x->efd >= 0) conn_replace(x->efd, engine.ready);
    if (x->pfd >= 0) conn_replace(x->pfd, engine.ready);
  }
  if (engine.wake[0] >= 0) close(engine.wake[0]);           /* the parent's engine's */
  if (engine.wake[1] >= 0 && engine.wake[1] != engine.wake[0]) close(engine.wake[1]);
  engine.wake[0] = engine.wake[1] = -1;
  conn_forked();
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static CURLcode init_code = CURLE_FAILED_INIT;

/* The module stays mapped for the life of the process (lua_close would
** dlclose it): the exit handler and the engine thread's code must outlive
** every lua_State, whatever an interceptor does with DSO exit handlers. */
static void pin_module(void) {
  Dl_info info;
  if (dladdr((void *)engine_atexit, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static void global_init(void) {
  int ready[2];
  init_code = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (init_code != CURLE_OK) return;
  if (make_event(ready, 1)) {
    engine.ready = ready[0];
    if (ready[1] != ready[0]) close(ready[1]);               /* a pipe stays readable: one byte in it */
  }
  pin_module();
  atexit(engine_atexit);
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* curl_global_init is not re-entrant: once per process (busted runs luaopen
** once per spec file, a C host may open many lua_States) */
int engine_init(void) {
  pthread_once(&init_once, global_init);
  return init_code == CURLE_OK;
}

unsigned engine_generation(void) {
  unsigned g;
  pthread_mutex_lock(&engine.mu);
  g = engine.gen;
  pthread_mutex_unlock(&engine.mu);
  return g;
}

/* ------------------------------------------------------------ handing over */

/* x ends without the engine: with `code` and `why` (errbuf), its completion
** descriptor (if it has one) readable */
static void end_here(xfer *x, CURLcode code, const char *why) {
  x->code = code;
  if (why) snprintf(x->errbuf, sizeof x->errbuf, "%s", why);
  mark_done(x);
}

/* hand x to the engine thread, in its session's warm lane (x->lane is
** LANE_LENT) or far lane (LANE_FAR). Returns 0 when no completion fd or no
** engine thread could be made (x is then done, with that error). */
int engine_queue(xfer *x) {
  int fd[2], made = make_event(fd, 0), err = errno, ok;
  if (made) x->efd = fd[0], x->wfd = fd[1];
  pthread_mutex_lock(&engine.mu);
  if (made) watch(x);
  ok = made && engine_start();
  if (ok) {
    xfer **q = &engine.addq;
    while (*q) q = &(*q)->qnext;
    *q = x;
    x->state = X_QUEUED;
    x->gen = engine.gen;
    x->submitted = 1;
  }
  pthread_mutex_unlock(&engine.mu);
  if (ok) {
    wake();
  } else {
    char why[CURL_ERROR_SIZE];
    snprintf(why, sizeof why, "cannot start the transfer engine: %s",
             made ? "no thread" : strerror(err));
    end_here(x, CURLE_FAILED_INIT, why);
  }
  return ok;
}

/* the state of x, handed to the engine; an xfer of the parent process seen
** in a forked child has ended (aborted) */
int engine_state(xfer *x) {
  int st;
  pthread_mutex_lock(&engine.mu);
  st = x->state;
  if (st != X_DONE && x->gen != engine.gen) {
    x->state = st = X_DONE;
    x->code = CURLE_ABORTED_BY_CALLBACK;
    x->aborted = ABORT_FORK;
  }
  pthread_mutex_unlock(&engine.mu);
  return st;
}

/*
** Take x back from the engine, whatever it is doing; on return the engine
** no longer touches x, and x is done: its completion descriptor is
** readable, so a waiter wakes at once (queued, running, or the engine
** gone at exit).
*/
void engine_cancel(xfer *x) {
  pthread_mutex_lock(&engine.mu);
  if (x->gen == engine.gen && x->state == X_QUEUED) {
    xfer **q = &engine.addq;
    while (*q && *q != x) q = &(*q)->qnext;
    if (*q) *q = x->qnext;
    end_here(x, CURLE_ABORTED_BY_CALLBACK, NULL);
  } else if (x->gen == engine.gen && x->state == X_RUNNING && engine.running) {
    x->cancel = 1;
    x->qnext = engine.cancelq;
    engine.cancelq = x;
    pthread_mutex_unlock(&engine.mu);
    wake();
    pthread_mutex_lock(&engine.mu);
    while (x->cancel) pthread_cond_wait(&engine.cv, &engine.mu);
  }
  if (x->state != X_DONE) {                  /* engine gone (exit, fork): x is ours again */
    if (x->gen != engine.gen) {
      x->easy = NULL;                         /* the parent's handle: never touched */
      x->code = CURLE_ABORTED_BY_CALLBACK;
      x->state = X_DONE;                      /* its descriptor: made readable at the fork */
    } else {
      if (x->state == X_RUNNING) lane_drop(lane_of(x), x);
      end_here(x, CURLE_ABORTED_BY_CALLBACK, NULL);
    }
  }
  pthread_mutex_unlock(&engine.mu);
  x->submitted = 0;
}

/*
** Hand a connection over to be ended on the engine thread: easy handle e,
** the multi handle m it lives in (callbacks unset: lane_release), its
** socket fd. The engine waits up to `linger` seconds for the peer to end
** the connection, then frees e and m. Returns 0 when it cannot take them
** (out of memory, no thread): the caller frees them.
*/
int engine_retire(CURL *e, CURLM *m, curl_socket_t fd, double linger) {
  retired *r = malloc(sizeof *r);
  int ok;
  if (r == NULL) return 0;
  *r = (retired){ .easy = e, .multi = m, .fd = fd, .until = clock_now() + linger };
  pthread_mutex_lock(&engine.mu);
  ok = engine_start();
  if (ok) {
    r->next = engine.retireq;
    engine.retireq = r;
  }
  pthread_mutex_unlock(&engine.mu);
  if (!ok) {
    free(r);
    return 0;
  }
  wake();
  return 1;
}
