/*
** engine.c -- the engine thread: one for the whole process, driving a
** single libcurl multi handle for every non-blocking exchange that cannot
** run in its session's warm lane on the caller's thread, and the lanes lent
** to it; each exchange's completion descriptor is made readable when it
** ends. Also the process-wide duties that come with a thread: libcurl's
** global init, stopping the thread at exit(), and parking it around fork().
**
** Why a thread: one curl_multi_perform can take milliseconds of CPU (a TLS
** handshake under OpenSSL 3 costs 1-3 ms), and a host's resume must stay
** under 1 ms. Why one: a thread per request or per session does not scale
** to a thousand kept-alive sessions. The engine thread never touches a
** lua_State or a session: only xfers, and the lanes lent to it.
** Called by: core.c, session.c, lib/transfer.c.
** Calls: lib/lane.c, lib/handle.c, lib/conn.c.
** Lua-free, like every file in src/lib/.
*/
#define _GNU_SOURCE                  /* dladdr */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

#include "clock.h"
#include "conn.h"
#include "engine.h"
#include "handle.h"
#include "lane.h"

static struct engine {
  pthread_mutex_t mu;         /* guards everything below up to `lanes`, and every submitted xfer's state */
  pthread_cond_t cv;          /* a cancel was handled; the engine parked or was let go */
  CURLM *multi;               /* owned by the engine thread once it runs */
  pthread_t th;
  int running, stopping;
  int park, parked;           /* fork(): asked to wait outside libcurl; waiting so */
  xfer *addq, *cancelq;
  unsigned gen;               /* bumped in a forked child: older xfers are dead there */
  xhome *lanes;               /* the lanes lent to the engine thread (its own list) */
  /* the engine thread's alone: the lent lanes' descriptors as extra fds of
  ** curl_multi_poll; waitlane[i] is the lane of waitfd[i], in the order of `lanes` */
  struct curl_waitfd *waitfd;
  xhome **waitlane;
  int waitcap;
} engine = {
  .mu = PTHREAD_MUTEX_INITIALIZER,
  .cv = PTHREAD_COND_INITIALIZER,
  .gen = 1,
};

/* under engine.mu: the xfer is finished; its completion fd becomes
** readable. Written before `state`, so the fd is still open when it is
** written. */
static void mark_done(xfer *x) {
  if (x->wfd >= 0) {
    uint64_t one = 1;
    ssize_t w = write(x->wfd, &one, x->wfd == x->efd ? sizeof one : 1);
    (void)w;
  }
  x->state = X_DONE;
}

/* under engine.mu: x starts in its session's lane, which the engine now drives */
static void lane_lend(xfer *x) {
  xhome *h = x->home;
  if (curl_multi_add_handle(h->lane, x->easy) != CURLM_OK) {
    x->code = CURLE_FAILED_INIT;
    mark_done(x);
    return;
  }
  x->state = X_RUNNING;
  h->lnext = engine.lanes;
  engine.lanes = h;
}

/* under engine.mu: the engine stops driving h's lane */
static void lane_return(xhome *h) {
  xhome **p = &engine.lanes;
  while (*p && *p != h) p = &(*p)->lnext;
  if (*p) *p = h->lnext;
  h->lnext = NULL;
}

/* under engine.mu: attach the queued xfers, take back the cancelled ones */
static void engine_take(void) {
  while (engine.addq) {
    xfer *x = engine.addq;
    engine.addq = x->qnext;
    x->qnext = NULL;
    if (x->lane == LANE_LENT) {
      lane_lend(x);
    } else if (curl_multi_add_handle(engine.multi, x->easy) == CURLM_OK) {
      x->state = X_RUNNING;
    } else {
      x->code = CURLE_FAILED_INIT;
      mark_done(x);
    }
  }
  while (engine.cancelq) {
    xfer *x = engine.cancelq;
    engine.cancelq = x->qnext;
    x->qnext = NULL;
    if (x->state == X_RUNNING) {
      if (x->lane == LANE_LENT) {
        lane_drop(x);
        lane_return(x->home);
      } else {
        curl_multi_remove_handle(engine.multi, x->easy);
      }
      x->code = CURLE_ABORTED_BY_CALLBACK;
      mark_done(x);
    }
    x->cancel = 0;
  }
  pthread_cond_broadcast(&engine.cv);
}

static void engine_collect(void) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(engine.multi, &left)) != NULL) {
    xfer *x = NULL;
    CURLcode code = m->data.result;
    CURL *e = m->easy_handle;
    if (m->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
    curl_multi_remove_handle(engine.multi, e);
    handle_gather(x, code);
    pthread_mutex_lock(&engine.mu);
    mark_done(x);
    pthread_mutex_unlock(&engine.mu);
  }
}

/* fills waitfd/waitlane with the lent lanes' sockets; returns how many;
** lowers *ms to the earliest lane timer */
static int lanes_fds(int *ms) {
  int n = 0;
  double now = clock_now();
  for (xhome *h = engine.lanes; h; h = h->lnext) {
    int k;
    if (n + LANE_SOCKS > engine.waitcap) {
      int cap = engine.waitcap ? engine.waitcap * 2 : 64;
      struct curl_waitfd *p = realloc(engine.waitfd, sizeof *p * (size_t)cap);
      xhome **q = p ? realloc(engine.waitlane, sizeof *q * (size_t)cap) : NULL;
      if (p) engine.waitfd = p;
      if (q) engine.waitlane = q, engine.waitcap = cap;
      if (q == NULL) {                        /* out of memory: libcurl looks itself, often */
        *ms = 1;
        break;
      }
    }
    k = lane_waitfds(h, engine.waitfd + n, ms, now);
    for (int i = 0; i < k; i++) engine.waitlane[n++] = h;
  }
  return n;
}

/* after the poll: act in each lent lane; an exchange that ended there is
** done, and the lane goes back to its session */
static void lanes_run(int n) {
  int k = 0;
  xhome *next;
  for (xhome *h = engine.lanes; h; h = next) {
    unsigned short re[LANE_SOCKS];
    int m = 0;
    xfer *x;
    next = h->lnext;
    while (k < n && engine.waitlane[k] == h && m < LANE_SOCKS) re[m++] = engine.waitfd[k++].revents;
    lane_act(h, m == h->nlsock ? re : NULL);
    if ((x = lane_collect(h)) != NULL) {
      pthread_mutex_lock(&engine.mu);
      lane_return(h);
      mark_done(x);
      pthread_mutex_unlock(&engine.mu);
    }
  }
}

/* under engine.mu: a fork() is under way; wait, outside libcurl and
** OpenSSL (whose locks the child would inherit held), until the parent
** goes on */
static void engine_park(void) {
  engine.parked = 1;
  pthread_cond_broadcast(&engine.cv);
  while (engine.park && !engine.stopping) pthread_cond_wait(&engine.cv, &engine.mu);
  engine.parked = 0;
}

static void *engine_main(void *ud) {
  (void)ud;
  pthread_mutex_lock(&engine.mu);
  while (!engine.stopping) {
    int running, n, ms = 1000;
    if (engine.park) {
      engine_park();
      continue;
    }
    engine_take();
    pthread_mutex_unlock(&engine.mu);
    curl_multi_perform(engine.multi, &running);
    engine_collect();
    n = lanes_fds(&ms);
    curl_multi_poll(engine.multi, n ? engine.waitfd : NULL, (unsigned)n, ms, NULL);
    lanes_run(n);
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
  if (engine.multi == NULL) {
    engine.multi = curl_multi_init();
    if (engine.multi == NULL) return 0;
    /* every kept-alive session keeps its connection between tickles */
    curl_multi_setopt(engine.multi, CURLMOPT_MAXCONNECTS, 100000L);
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
*/
static void engine_atexit(void) {
  int joined;
  pthread_mutex_lock(&engine.mu);
  engine.stopping = 1;
  joined = engine.running;
  pthread_mutex_unlock(&engine.mu);
  if (!joined) return;
  curl_multi_wakeup(engine.multi);
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
  curl_multi_wakeup(engine.multi);
  pthread_mutex_lock(&engine.mu);
  while (engine.running && !engine.parked) pthread_cond_wait(&engine.cv, &engine.mu);
}
static void fork_parent(void) {
  engine.park = 0;
  pthread_cond_broadcast(&engine.cv);
  pthread_mutex_unlock(&engine.mu);
}
static void fork_child(void) {
  pthread_mutex_init(&engine.mu, NULL);
  pthread_cond_init(&engine.cv, NULL);
  engine.multi = NULL;
  engine.running = engine.stopping = engine.park = engine.parked = 0;
  engine.addq = engine.cancelq = NULL;
  engine.lanes = NULL;
  engine.gen++;
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
  init_code = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (init_code != CURLE_OK) return;
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

static int make_fd(xfer *x) {
#ifdef __linux__
  x->efd = x->wfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  return x->efd >= 0;
#else
  int p[2];
  if (pipe(p) != 0) return 0;
  for (int i = 0; i < 2; i++) {
    fcntl(p[i], F_SETFD, FD_CLOEXEC);
    fcntl(p[i], F_SETFL, O_NONBLOCK);
  }
  x->efd = p[0];
  x->wfd = p[1];
  return 1;
#endif
}

/* hand x to the engine thread (in its session's lane when x->lane is
** LANE_LENT). Returns 0 when no completion fd or no engine thread could be
** made (x is then done, with that error). */
int engine_queue(xfer *x) {
  int ok = make_fd(x);
  pthread_mutex_lock(&engine.mu);
  ok = ok && engine_start();
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
    curl_multi_wakeup(engine.multi);
  } else {
    x->code = CURLE_FAILED_INIT;
    snprintf(x->errbuf, sizeof x->errbuf, "cannot start the transfer engine");
    x->state = X_DONE;
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
    x->aborted = 1;
  }
  pthread_mutex_unlock(&engine.mu);
  return st;
}

/* take x back from the engine, whatever it is doing; on return the engine
** no longer touches x */
void engine_cancel(xfer *x) {
  pthread_mutex_lock(&engine.mu);
  if (x->gen == engine.gen && x->state == X_QUEUED) {
    xfer **q = &engine.addq;
    while (*q && *q != x) q = &(*q)->qnext;
    if (*q) *q = x->qnext;
    x->code = CURLE_ABORTED_BY_CALLBACK;
    x->state = X_DONE;
  } else if (x->gen == engine.gen && x->state == X_RUNNING && engine.running) {
    x->cancel = 1;
    x->qnext = engine.cancelq;
    engine.cancelq = x;
    pthread_mutex_unlock(&engine.mu);
    curl_multi_wakeup(engine.multi);
    pthread_mutex_lock(&engine.mu);
    while (x->cancel) pthread_cond_wait(&engine.cv, &engine.mu);
  }
  if (x->state != X_DONE) {                  /* engine gone (exit, fork): x is ours again */
    if (x->gen != engine.gen) x->easy = NULL;      /* the parent's handle: never touched */
    else if (x->state == X_RUNNING && x->lane == LANE_LENT) curl_multi_remove_handle(x->home->lane, x->easy);
    x->code = CURLE_ABORTED_BY_CALLBACK;
    x->state = X_DONE;
  }
  pthread_mutex_unlock(&engine.mu);
  x->submitted = 0;
}
