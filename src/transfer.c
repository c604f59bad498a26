/*
** transfer.c -- the transfer engine: libcurl easy handles (a pool per
** session, made from a template), blocking exchanges run in place on the
** caller's thread, and non-blocking ones run by one engine thread for the
** whole process, which drives a single multi handle and makes each
** exchange's completion fd readable when it ends.
**
** Why a thread: one curl_multi_perform can take milliseconds of CPU (a TLS
** handshake under OpenSSL 3 costs 1-3 ms), and a host's resume must stay
** under 1 ms. Why one: a thread per request or per session does not scale
** to a thousand kept-alive sessions. Why blocking calls stay in place: a
** hand-over to another thread costs more than the exchange on loopback.
** The engine thread never touches a lua_State or a session: only xfers,
** and the lanes lent to it.
**
** The warm lane (see xhome in ibkr.h) takes the hand-over away from the
** common case of a non-blocking call: a kept connection to the gateway
** and a small request. Such an exchange is stepped on the caller's thread
** with curl_multi_socket_action (the resumer waits on its socket), and
** costs about what a blocking call does. It may never open a socket there
** (conn.c refuses): when its kept connection turns out gone, the exchange
** starts over, with the lane lent to the engine, which connects.
*/
#define _GNU_SOURCE                  /* dladdr */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

#include "ibkr.h"

/* ------------------------------------------------------------ the engine */

static struct engine {
  pthread_mutex_t mu;         /* guards everything below and every submitted xfer's state */
  pthread_cond_t cv;          /* a cancel was handled; the engine parked or was let go */
  CURLM *multi;               /* owned by the engine thread once it runs */
  pthread_t th;
  int running, stopping;
  int park, parked;           /* fork(): asked to wait outside libcurl; waiting so */
  xfer *addq, *cancelq;
  unsigned gen;               /* bumped in a forked child: older xfers are dead there */
  xhome *lanes;               /* the lanes lent to the engine thread (its own list) */
} E = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0, 0, 0, NULL, NULL, 1, NULL };

double ibkr_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* what the result needs, read while the transfer's owner still holds it */
static void gather(xfer *x, CURLcode code) {
  const char *loc = NULL;
  x->code = code;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
  curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &x->nconnects);
  curl_easy_getinfo(x->easy, CURLINFO_HEADER_SIZE, &x->header_size);
  curl_easy_getinfo(x->easy, CURLINFO_RETRY_AFTER, &x->retry_after);
  curl_easy_getinfo(x->easy, CURLINFO_SSL_VERIFYRESULT, &x->verify_result);
  curl_easy_getinfo(x->easy, CURLINFO_REDIRECT_URL, &loc);
  if (loc) x->location = ibkr_strndup(loc, strlen(loc));
  if (code == CURLE_OK && !x->hdr_done) {     /* closed inside the header block */
    x->code = CURLE_WEIRD_SERVER_REPLY;
    x->status = 0;
    snprintf(x->errbuf, sizeof x->errbuf, "connection closed inside the response headers");
  }
}

/* under E.mu: the xfer is finished; its completion fd becomes readable.
** Written before `state`, so the fd is still open when it is written. */
static void mark_done(xfer *x) {
  if (x->wfd >= 0) {
    uint64_t one = 1;
    ssize_t w = write(x->wfd, &one, x->wfd == x->efd ? sizeof one : 1);
    (void)w;
  }
  x->state = X_DONE;
}


/* ------------------------------------------------------------ the warm lane: both threads */

/* what libcurl waits on in a lane (CURLMOPT_SOCKETFUNCTION); a lane runs one
** exchange, which has at most two sockets (two address families connecting) */
static int lane_on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
  xhome *h = userp;
  int i = 0;
  (void)e;
  (void)socketp;
  while (i < h->nlsock && h->lsock[i].fd != fd) i++;
  if (what == CURL_POLL_REMOVE) {
    if (i < h->nlsock) h->lsock[i] = h->lsock[--h->nlsock];
  } else if (i < h->nlsock) {
    h->lsock[i].what = what;
  } else if (h->nlsock < LANE_SOCKS) {
    h->lsock[h->nlsock].fd = fd;
    h->lsock[h->nlsock++].what = what;
  }
  return 0;
}

/* when libcurl wants a timeout action in a lane (CURLMOPT_TIMERFUNCTION) */
static int lane_on_timer(CURLM *m, long ms, void *userp) {
  xhome *h = userp;
  (void)m;
  h->lane_due = ms < 0 ? -1.0 : ibkr_now() + (double)ms / 1000.0;
  return 0;
}

static int lane_make(xhome *h) {
  if (h->lane) return 1;
  if ((h->lane = curl_multi_init()) == NULL) return 0;
  curl_multi_setopt(h->lane, CURLMOPT_SOCKETFUNCTION, lane_on_socket);
  curl_multi_setopt(h->lane, CURLMOPT_SOCKETDATA, (void *)h);
  curl_multi_setopt(h->lane, CURLMOPT_TIMERFUNCTION, lane_on_timer);
  curl_multi_setopt(h->lane, CURLMOPT_TIMERDATA, (void *)h);
  curl_multi_setopt(h->lane, CURLMOPT_MAXCONNECTS, 1L);
  return 1;
}

/* poll(2) events for what libcurl waits on. A socket it wants writable is
** watched for input too: a refused connect shows only as input (EOF). */
static short poll_events(int what) {
  return (short)(((what & CURL_POLL_OUT) ? POLLOUT | POLLIN : 0) | ((what & CURL_POLL_IN) ? POLLIN : 0));
}

/* the same, for an extra descriptor of curl_multi_poll */
static unsigned short wait_events(int what) {
  short ev = poll_events(what);
  return (unsigned short)(((ev & POLLIN) ? CURL_WAIT_POLLIN : 0) | ((ev & POLLOUT) ? CURL_WAIT_POLLOUT : 0));
}

/* CURL_CSELECT_* of what curl_multi_poll reports of an extra descriptor */
static int cselect(unsigned short re) {
  return ((re & CURL_WAIT_POLLIN) ? CURL_CSELECT_IN : 0) | ((re & CURL_WAIT_POLLOUT) ? CURL_CSELECT_OUT : 0);
}

/* what libcurl waits for on a socket, as CURL_CSELECT_* */
static int cwanted(int what) {
  return ((what & CURL_POLL_IN) ? CURL_CSELECT_IN : 0) | ((what & CURL_POLL_OUT) ? CURL_CSELECT_OUT : 0);
}

/* let libcurl act in the lane: on each socket it waits on (re: their
** readiness, parallel to lsock; NULL: not looked at, presumed ready for
** what libcurl waits for, which costs a read or a send that would block
** when it is not: what libcurl's own look would cost), and on its timer
** when due. Run by the lane's driver only. */
static void lane_act(xhome *h, const unsigned short *re) {
  struct lanesock s[LANE_SOCKS];
  int n = h->nlsock, running;
  memcpy(s, h->lsock, sizeof s[0] * (size_t)n);          /* the actions change lsock */
  for (int i = 0; i < n; i++)
    if (re == NULL || re[i] != 0)
      curl_multi_socket_action(h->lane, s[i].fd, re ? cselect(re[i]) : cwanted(s[i].what), &running);
  if (h->lane_due >= 0 && ibkr_now() >= h->lane_due) {
    h->lane_due = -1;
    curl_multi_socket_action(h->lane, CURL_SOCKET_TIMEOUT, 0, &running);
  }
}

/* the exchange that ended in the lane, gathered and taken out, or NULL;
** notes whether its connection was kept (the lane is warm) */
static xfer *lane_collect(xhome *h) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(h->lane, &left)) != NULL) {
    xfer *x = NULL;
    CURLcode code = m->data.result;
    if (m->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    gather(x, code);
    h->lane_keep = CURL_SOCKET_BAD;
    if (x->code == CURLE_OK) curl_easy_getinfo(x->easy, CURLINFO_ACTIVESOCKET, &h->lane_keep);
    curl_multi_remove_handle(h->lane, x->easy);
    return x;
  }
  return NULL;
}

/* ------------------------------------------------------------ the engine thread */

/* under E.mu: x starts in its session's lane, which the engine now drives */
static void lane_lend(xfer *x) {
  xhome *h = x->home;
  if (curl_multi_add_handle(h->lane, x->easy) != CURLM_OK) {
    x->code = CURLE_FAILED_INIT;
    mark_done(x);
    return;
  }
  x->state = X_RUNNING;
  h->lnext = E.lanes;
  E.lanes = h;
}

/* under E.mu: the engine stops driving h's lane */
static void lane_return(xhome *h) {
  xhome **p = &E.lanes;
  while (*p && *p != h) p = &(*p)->lnext;
  if (*p) *p = h->lnext;
  h->lnext = NULL;
}

/* under E.mu: attach the queued xfers, take back the cancelled ones */
static void engine_take(void) {
  while (E.addq) {
    xfer *x = E.addq;
    E.addq = x->qnext;
    x->qnext = NULL;
    if (x->lane == LANE_LENT) {
      lane_lend(x);
    } else if (curl_multi_add_handle(E.multi, x->easy) == CURLM_OK) {
      x->state = X_RUNNING;
    } else {
      x->code = CURLE_FAILED_INIT;
      mark_done(x);
    }
  }
  while (E.cancelq) {
    xfer *x = E.cancelq;
    E.cancelq = x->qnext;
    x->qnext = NULL;
    if (x->state == X_RUNNING) {
      if (x->lane == LANE_LENT) {
        curl_multi_remove_handle(x->home->lane, x->easy);
        x->home->lane_keep = CURL_SOCKET_BAD;
        lane_return(x->home);
      } else {
        curl_multi_remove_handle(E.multi, x->easy);
      }
      x->code = CURLE_ABORTED_BY_CALLBACK;
      mark_done(x);
    }
    x->cancel = 0;
  }
  pthread_cond_broadcast(&E.cv);
}

static void engine_collect(void) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(E.multi, &left)) != NULL) {
    xfer *x = NULL;
    CURLcode code = m->data.result;
    CURL *e = m->easy_handle;
    if (m->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
    curl_multi_remove_handle(E.multi, e);
    gather(x, code);
    pthread_mutex_lock(&E.mu);
    mark_done(x);
    pthread_mutex_unlock(&E.mu);
  }
}


/* The lent lanes' descriptors, as extra fds of the engine's curl_multi_poll
** (engine thread only). XH[i]: the lane of XP[i], in the order of E.lanes. */
static struct curl_waitfd *XP;
static xhome **XH;
static int XCAP;

/* fills XP/XH; returns how many; lowers *ms to the earliest lane timer */
static int lanes_fds(int *ms) {
  int n = 0;
  double now = ibkr_now();
  for (xhome *h = E.lanes; h; h = h->lnext) {
    if (n + LANE_SOCKS > XCAP) {
      int cap = XCAP ? XCAP * 2 : 64;
      struct curl_waitfd *p = realloc(XP, sizeof *p * (size_t)cap);
      xhome **q = p ? realloc(XH, sizeof *q * (size_t)cap) : NULL;
      if (p) XP = p;
      if (q) XH = q, XCAP = cap;
      if (q == NULL) {                        /* out of memory: libcurl looks itself, often */
        *ms = 1;
        break;
      }
    }
    for (int i = 0; i < h->nlsock; i++, n++) {
      XP[n].fd = h->lsock[i].fd;
      XP[n].events = wait_events(h->lsock[i].what);
      XP[n].revents = 0;
      XH[n] = h;
    }
    if (h->lane_due >= 0) {
      double left = (h->lane_due - now) * 1000;
      int l = left <= 0 ? 0 : left >= 1000 ? 1000 : (int)left + 1;
      if (l < *ms) *ms = l;
    }
  }
  return n;
}

/* after the poll: act in each lent lane; an exchange that ended there is
** done, and the lane goes back to its session */
static void lanes_run(int n) {
  int k = 0;
  xhome *next;
  for (xhome *h = E.lanes; h; h = next) {
    unsigned short re[LANE_SOCKS];
    int m = 0;
    xfer *x;
    next = h->lnext;
    while (k < n && XH[k] == h && m < LANE_SOCKS) re[m++] = XP[k++].revents;
    lane_act(h, m == h->nlsock ? re : NULL);
    if ((x = lane_collect(h)) != NULL) {
      pthread_mutex_lock(&E.mu);
      lane_return(h);
      mark_done(x);
      pthread_mutex_unlock(&E.mu);
    }
  }
}

/* under E.mu: a fork() is under way; wait, outside libcurl and OpenSSL
** (whose locks the child would inherit held), until the parent goes on */
static void engine_park(void) {
  E.parked = 1;
  pthread_cond_broadcast(&E.cv);
  while (E.park && !E.stopping) pthread_cond_wait(&E.cv, &E.mu);
  E.parked = 0;
}

static void *engine_main(void *ud) {
  (void)ud;
  pthread_mutex_lock(&E.mu);
  while (!E.stopping) {
    int running, n, ms = 1000;
    if (E.park) {
      engine_park();
      continue;
    }
    engine_take();
    pthread_mutex_unlock(&E.mu);
    curl_multi_perform(E.multi, &running);
    engine_collect();
    n = lanes_fds(&ms);
    curl_multi_poll(E.multi, n ? XP : NULL, (unsigned)n, ms, NULL);
    lanes_run(n);
    pthread_mutex_lock(&E.mu);
  }
  E.running = 0;
  for (xfer *x = E.cancelq; x; x = x->qnext) x->cancel = 0;
  E.cancelq = NULL;
  pthread_cond_broadcast(&E.cv);
  pthread_mutex_unlock(&E.mu);
  return NULL;
}

/* under E.mu. The engine blocks every signal: the host's handlers keep
** running on the host's threads. */
static int engine_start(void) {
  sigset_t all, old;
  int rc;
  if (E.running) return 1;
  if (E.stopping) return 0;
  if (E.multi == NULL) {
    E.multi = curl_multi_init();
    if (E.multi == NULL) return 0;
    /* every kept-alive session keeps its connection between tickles */
    curl_multi_setopt(E.multi, CURLMOPT_MAXCONNECTS, 100000L);
  }
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&E.th, NULL, engine_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) return 0;
  E.running = 1;
  return 1;
}

/*
** Runs at exit() (and when the module is unloaded): stop the engine before
** libcrypto's own atexit handler frees what a live TLS transfer uses. It is
** registered after curl_global_init, so it runs before OpenSSL's handler.
*/
static void engine_atexit(void) {
  int joined;
  pthread_mutex_lock(&E.mu);
  E.stopping = 1;
  joined = E.running;
  pthread_mutex_unlock(&E.mu);
  if (!joined) return;
  curl_multi_wakeup(E.multi);
  pthread_join(E.th, NULL);
}

/* fork(): the child has no engine thread. Xfers of the parent stay dead in
** the child (their generation is old), sessions of the parent refuse work
** there and are freed without touching their curl handles, whose sockets
** and TLS state the parent still uses. Before the fork the engine thread is
** parked at the top of its loop: were it inside libcurl, OpenSSL's locks
** (held by a TLS handshake) would stay held for ever in the child. */
static void fork_prepare(void) {
  pthread_mutex_lock(&E.mu);
  if (!E.running || pthread_equal(pthread_self(), E.th)) return;
  E.park = 1;
  pthread_mutex_unlock(&E.mu);
  curl_multi_wakeup(E.multi);
  pthread_mutex_lock(&E.mu);
  while (E.running && !E.parked) pthread_cond_wait(&E.cv, &E.mu);
}
static void fork_parent(void) {
  E.park = 0;
  pthread_cond_broadcast(&E.cv);
  pthread_mutex_unlock(&E.mu);
}
static void fork_child(void) {
  pthread_mutex_init(&E.mu, NULL);
  pthread_cond_init(&E.cv, NULL);
  E.multi = NULL;
  E.running = E.stopping = E.park = E.parked = 0;
  E.addq = E.cancelq = NULL;
  E.lanes = NULL;
  E.gen++;
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
int xfer_global_init(void) {
  pthread_once(&init_once, global_init);
  return init_code == CURLE_OK;
}

unsigned xfer_generation(void) {
  unsigned g;
  pthread_mutex_lock(&E.mu);
  g = E.gen;
  pthread_mutex_unlock(&E.mu);
  return g;
}

/* ------------------------------------------------------------ handles */

/*
** The write callback runs with libcurl on the C stack: it only touches the
** xfer's buffer. Refusing data (returning 0) makes curl fail with
** CURLE_WRITE_ERROR, which the result turns into kind "too_large".
*/
static size_t on_write(char *data, size_t size, size_t nmemb, void *ud) {
  xfer *x = ud;
  size_t len = size * nmemb;
  if (x->body.n + len > x->max_body || !ibuf_add(&x->body, data, len)) {
    x->overflow = 1;
    return 0;
  }
  return len;
}

/* Tracks whether the final response's header block ended (its empty
** line): libcurl reports success for a response cut off inside it. A new
** status line (after a 1xx, or a proxy's CONNECT answer) starts a block. */
static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
  xfer *x = ud;
  size_t len = size * nmemb;
  if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) x->hdr_done = 0;
  else if ((len == 2 && data[0] == '\r' && data[1] == '\n') || (len == 1 && data[0] == '\n'))
    x->hdr_done = 1;
  return len;
}

/* The session's template: options every exchange shares. The session adds
** its own (TLS, proxy, timeouts, user agent) before the first exchange. */
CURL *xhome_template(xhome *h, char *err, size_t errlen) {
  CURL *e;
  CURLcode c;
  h->gen = xfer_generation();
  h->lane_keep = CURL_SOCKET_BAD;
  h->lane_due = -1;
  e = h->tmpl = curl_easy_init();
  c = e ? CURLE_OK : CURLE_OUT_OF_MEMORY;
#define SET(opt, val) if (c == CURLE_OK) c = curl_easy_setopt(e, opt, val)
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_FOLLOWLOCATION, 0L);
  SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
  SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  SET(CURLOPT_ACCEPT_ENCODING, "");
  SET(CURLOPT_WRITEFUNCTION, on_write);
  SET(CURLOPT_HEADERFUNCTION, on_header);
  SET(CURLOPT_TCP_KEEPALIVE, 1L);
#undef SET
  if (c == CURLE_OK && !conn_watch(e)) c = CURLE_UNKNOWN_OPTION;
  if (c != CURLE_OK) {
    snprintf(err, errlen, "libcurl refused an option: %s", curl_easy_strerror(c));
    return NULL;
  }
  return e;
}

static int is(const callspec *cs, const char *m) {
  size_t n = strlen(m);
  return cs->mlen == n && memcmp(cs->method, m, n) == 0;
}

/* the options of one exchange; every one is set each time, since a pooled
** handle keeps what the previous exchange set */
static void set_exchange(xfer *x, const callspec *cs, struct curl_slist *hl, long timeout_ms) {
  CURL *e = x->easy;
  long fresh;
  x->head = is(cs, "HEAD");
  curl_easy_setopt(e, CURLOPT_URL, x->url);
  curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);                 /* wire.c refused dot segments; send as given */
  curl_easy_setopt(e, CURLOPT_NOBODY, 0L);
  if (cs->shape == HL_NOBODY) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    if (x->head) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->post ? x->post : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->postlen);
  }
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST,
                   (is(cs, "GET") || is(cs, "POST") || x->head) ? NULL : cs->method);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, hl);
  /* libcurl silently sends a request again when a reused connection turns
  ** out closed by the server before any answer byte, and the server may have
  ** acted on it. Only GET/HEAD/OPTIONS, and calls the caller marked
  ** repeatable, may take that chance: the rest go on a fresh connection,
  ** closed after the exchange (else every order would leave one more idle
  ** connection in the engine's cache) */
  fresh = !(x->repeatable || is(cs, "GET") || x->head || is(cs, "OPTIONS"));
  x->fresh = (int)fresh;
  curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, fresh);
  curl_easy_setopt(e, CURLOPT_FORBID_REUSE, fresh);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)x);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)x);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, (void *)x);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, (void *)&x->cw);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, NULL);
}

/*
** Give x an easy handle of home h set for the exchange cs, and put it on
** h's list of live exchanges. x->url/post/callh are set by the caller.
** Returns 0 when out of memory. Runs no Lua code.
*/
int xfer_open(xfer *x, xhome *h, const callspec *cs, struct curl_slist *hl, long timeout_ms) {
  x->easy = h->npool ? h->pool[--h->npool] : curl_easy_duphandle(h->tmpl);
  if (x->easy == NULL) return 0;
  x->home = h;
  x->next = h->live;
  if (h->live) h->live->prev = x;
  h->live = x;
  h->nlive++;
  h->exchanges++;
  x->deadline = ibkr_now() + (double)timeout_ms / 1000.0;
  set_exchange(x, cs, hl, timeout_ms);
  return 1;
}

/* ------------------------------------------------------------ running */

static int lane_block(xfer *x);

/* blocking: drive x on the session's own multi handle until it ends, the
** way curl_easy_perform does (the connections stay in that multi's cache) */
void xfer_run_inline(xfer *x) {
  xhome *h = x->home;
  CURLMsg *m;
  int running, left;
  if (lane_block(x)) return;
  if (h->multi == NULL && (h->multi = curl_multi_init()) != NULL)
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 4L);
  if (h->multi == NULL || curl_multi_add_handle(h->multi, x->easy) != CURLM_OK) {
    x->code = CURLE_OUT_OF_MEMORY;
    x->state = X_DONE;
    return;
  }
  for (;;) {
    if (curl_multi_perform(h->multi, &running) != CURLM_OK) {
      x->code = CURLE_OUT_OF_MEMORY;
      break;
    }
    if ((m = curl_multi_info_read(h->multi, &left)) != NULL && m->msg == CURLMSG_DONE) {
      gather(x, m->data.result);
      break;
    }
    curl_multi_poll(h->multi, NULL, 0, 1000, NULL);
  }
  curl_multi_remove_handle(h->multi, x->easy);
  x->state = X_DONE;
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

/* hand x to the engine thread. Returns 0 when no completion fd or no
** engine thread could be made (x is then done, with that error). */
static int engine_queue(xfer *x) {
  int ok = make_fd(x);
  pthread_mutex_lock(&E.mu);
  ok = ok && engine_start();
  if (ok) {
    xfer **q = &E.addq;
    while (*q) q = &(*q)->qnext;
    *q = x;
    x->state = X_QUEUED;
    x->gen = E.gen;
    x->submitted = 1;
  }
  pthread_mutex_unlock(&E.mu);
  if (ok) {
    curl_multi_wakeup(E.multi);
  } else {
    x->code = CURLE_FAILED_INIT;
    snprintf(x->errbuf, sizeof x->errbuf, "cannot start the transfer engine");
    x->state = X_DONE;
  }
  return ok;
}

/* ------------------------------------------------------------ the warm lane: the Lua thread */

/* x, which found the lane's kept connection gone, is to be sent again */
static void restart(xfer *x) {
  x->code = CURLE_OK;
  x->errbuf[0] = '\0';
  x->status = x->nconnects = x->header_size = 0;
  x->retry_after = 0;
  x->verify_result = 0;
  free(x->location);
  x->location = NULL;
  x->body.n = 0;
  x->overflow = x->hdr_done = 0;
  x->cw.refuse = x->cw.refused = 0;
}

/* x starts over: libcurl's clock would start again, so its timeout becomes
** what is left of its deadline; 0 (x is done, a timeout) when nothing is */
static int keep_deadline(xfer *x) {
  double left = x->deadline - ibkr_now();
  if (left <= 0.001) {
    x->code = CURLE_OPERATION_TIMEDOUT;
    snprintf(x->errbuf, sizeof x->errbuf, "Operation timed out: the kept connection was gone and "
             "no time was left to send the request again");
    x->state = X_DONE;
    return 0;
  }
  curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)ceil(left * 1000));
  return 1;
}

/* Step x, running in the lane on this thread. On return it may have ended,
** or gone to the engine: its connection was gone, and a new one may not be
** opened here (nothing was answered on the old one, and x is repeatable) */
static void lane_step(xfer *x) {
  xhome *h = x->home;
  if (h == NULL || h->gen != E.gen) {          /* a parent's exchange seen in a forked child */
    x->easy = h && h->gen != E.gen ? NULL : x->easy;
    x->code = CURLE_ABORTED_BY_CALLBACK;
    x->aborted = 1;
    x->state = X_DONE;
    return;
  }
  lane_act(h, NULL);
  if (lane_collect(h) == NULL) return;
  if (!x->cw.refused) {
    x->state = X_DONE;
    h->lane_exchanges++;
    return;
  }
  restart(x);
  if (!keep_deadline(x)) return;
  x->lane = LANE_LENT;
  engine_queue(x);
}

/* whether x may take its session's lane now: the lane is free, x may be
** sent again (a kept connection), and a close of its connection costs
** little here (inline_ok). x then holds it. */
static int lane_take(xfer *x) {
  xhome *h = x->home;
  if (!h->inline_ok || x->fresh || h->lane_x != NULL || !lane_make(h)) return 0;
  h->lane_x = x;
  curl_easy_setopt(x->easy, CURLOPT_CLOSESOCKETDATA, (void *)&h->lane_keep);
  return 1;
}

/* blocking, in the lane when x may take it: x may connect there (its caller
** waits anyway), and leaves its connection to the lane's next exchanges,
** cooperative ones included. Returns 0 when x must run elsewhere. */
static int lane_block(xfer *x) {
  xhome *h = x->home;
  if (!lane_take(x)) return 0;
  if (curl_multi_add_handle(h->lane, x->easy) != CURLM_OK) {
    h->lane_x = NULL;
    return 0;
  }
  x->lane = LANE_INLINE;
  x->state = X_RUNNING;
  xfer_wait(x, -1);
  return 1;
}

/* non-blocking: x runs in its session's lane when it fits there (on this
** thread when the lane has a kept connection, else lent to the engine),
** else on the engine's own multi handle. Returns 0 when x could not start
** (it is then done, with the error). */
int xfer_submit(xfer *x) {
  xhome *h = x->home;
  if (x->postlen <= LANE_BODY_MAX && lane_take(x)) {
    x->lane = LANE_LENT;
    if (h->lane_keep != CURL_SOCKET_BAD) {
      x->cw.refuse = 1;
      if (curl_multi_add_handle(h->lane, x->easy) == CURLM_OK) {
        x->lane = LANE_INLINE;
        x->state = X_RUNNING;
        lane_step(x);
        return 1;
      }
      x->cw.refuse = 0;
    }
  }
  return engine_queue(x);
}

/* whether x has ended (a step of it, when it runs in the lane here); an
** xfer of the parent process seen in a forked child has ended too (aborted) */
int xfer_done(xfer *x) {
  int st;
  if (x->lane == LANE_INLINE && x->state == X_RUNNING) lane_step(x);
  if (!x->submitted) {
    st = x->state == X_NEW ? X_DONE : x->state;
  } else {
    pthread_mutex_lock(&E.mu);
    st = x->state;
    if (st != X_DONE && x->gen != E.gen) {
      x->state = st = X_DONE;
      x->code = CURLE_ABORTED_BY_CALLBACK;
      x->aborted = 1;
    }
    pthread_mutex_unlock(&E.mu);
    if (st == X_DONE) x->submitted = 0;
  }
  if (st == X_DONE && x->home && x->home->lane_x == x) x->home->lane_x = NULL;
  return st == X_DONE;
}

/* one descriptor always readable: the pollfd of an exchange that ended
** in the lane, until it is collected */
static int ready_fd = -1;
static pthread_once_t ready_once = PTHREAD_ONCE_INIT;
static void make_ready(void) {
#ifdef __linux__
  ready_fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
#else
  int p[2];
  if (pipe(p) != 0) return;
  fcntl(p[0], F_SETFD, FD_CLOEXEC);
  fcntl(p[1], F_SETFD, FD_CLOEXEC);
  if (write(p[1], "", 1) != 1) return;
  ready_fd = p[0];
#endif
}

/* the descriptor to wait on before looking at x again, and for what
** (*events: "r", "w" or "rw"); -1: none (wait for xfer_timeout) */
int xfer_pollfd(xfer *x, const char **events) {
  *events = "r";
  if (x->lane == LANE_INLINE && x->state == X_RUNNING) {
    xhome *h = x->home;
    if (h == NULL || h->nlsock == 0) return -1;
    *events = h->lsock[0].what == CURL_POLL_OUT ? "w" : h->lsock[0].what == CURL_POLL_INOUT ? "rw" : "r";
    /* a duplicate, open until x is closed: a waiter never watches a number
    ** libcurl closed (the session closed from elsewhere) and reused */
    if (x->pfd < 0) x->pfd = fcntl(h->lsock[0].fd, F_DUPFD_CLOEXEC, 0);
    return x->pfd;
  }
  if (x->lane == LANE_INLINE && x->state == X_DONE && x->efd < 0) {
    pthread_once(&ready_once, make_ready);
    return ready_fd;
  }
  return x->efd;
}

/* seconds after which x should be looked at even without a wake-up: its
** own deadline plus a margin (the engine reports a timeout through the
** descriptor; never below 10 ms), or libcurl's timer in the lane */
double xfer_timeout(xfer *x) {
  double now = ibkr_now(), left = x->deadline - now + 0.1;
  if (left < 0.01) left = 0.01;
  if (x->lane == LANE_INLINE && x->state == X_RUNNING && x->home && x->home->lane_due >= 0 &&
      x->home->lane_due - now < left)
    left = x->home->lane_due > now ? x->home->lane_due - now : 0;
  return left;
}

/* wait until x ends or `timeout` seconds passed (< 0: no limit), sleeping
** on its completion fd (or its sockets, in the lane); returns whether it ended */
int xfer_wait(xfer *x, double timeout) {
  double end = timeout >= 0 ? ibkr_now() + timeout : 0;
  while (!xfer_done(x)) {
    struct pollfd p[LANE_SOCKS];
    int n = 0, ms = 1000;
    if (timeout >= 0) {
      double left = end - ibkr_now();
      if (left <= 0) return 0;
      if (left * 1000 < ms) ms = (int)(left * 1000) + 1;
    }
    if (x->lane == LANE_INLINE) {
      xhome *h = x->home;
      double t = xfer_timeout(x) * 1000;
      for (; n < h->nlsock; n++) p[n] = (struct pollfd){ h->lsock[n].fd, poll_events(h->lsock[n].what), 0 };
      if (t < ms) ms = (int)t + (t > (int)t);
    } else {
      if (x->efd < 0) return 0;
      p[n++] = (struct pollfd){ x->efd, POLLIN, 0 };
    }
    poll(p, (nfds_t)n, ms);
  }
  return 1;
}

/* take x back from the engine, whatever it is doing; on return the engine
** no longer touches x */
static void cancel(xfer *x) {
  pthread_mutex_lock(&E.mu);
  if (x->gen == E.gen && x->state == X_QUEUED) {
    xfer **q = &E.addq;
    while (*q && *q != x) q = &(*q)->qnext;
    if (*q) *q = x->qnext;
    x->code = CURLE_ABORTED_BY_CALLBACK;
    x->state = X_DONE;
  } else if (x->gen == E.gen && x->state == X_RUNNING && E.running) {
    x->cancel = 1;
    x->qnext = E.cancelq;
    E.cancelq = x;
    pthread_mutex_unlock(&E.mu);
    curl_multi_wakeup(E.multi);
    pthread_mutex_lock(&E.mu);
    while (x->cancel) pthread_cond_wait(&E.cv, &E.mu);
  }
  if (x->state != X_DONE) {                  /* engine gone (exit, fork): x is ours again */
    if (x->gen != E.gen) x->easy = NULL;      /* the parent's handle: never touched */
    else if (x->state == X_RUNNING && x->lane == LANE_LENT) curl_multi_remove_handle(x->home->lane, x->easy);
    x->code = CURLE_ABORTED_BY_CALLBACK;
    x->state = X_DONE;
  }
  pthread_mutex_unlock(&E.mu);
  x->submitted = 0;
}

/* x, running in the lane here, is stopped (its connection is closed) */
static void lane_abandon(xfer *x, int forked) {
  xhome *h = x->home;
  if (h && !forked) {
    curl_multi_remove_handle(h->lane, x->easy);
    h->lane_keep = CURL_SOCKET_BAD;
    /* the connection is dropped: a waiter on the duplicate wakes at once
    ** (EOF), as it would on a completion descriptor */
    if (x->pfd >= 0) shutdown(x->pfd, SHUT_RDWR);
  }
  if (forked) x->easy = NULL;                 /* the parent's handle: never touched */
  x->code = CURLE_ABORTED_BY_CALLBACK;
  x->state = X_DONE;
}

static void unlink_live(xfer *x) {
  xhome *h = x->home;
  if (h == NULL) return;
  if (x->prev) x->prev->next = x->next;
  else h->live = x->next;
  if (x->next) x->next->prev = x->prev;
  x->prev = x->next = NULL;
  h->nlive--;
}

/* end x: stop it if it runs, give its handle back to the pool, free its
** memory. Idempotent. */
void xfer_close(xfer *x) {
  xhome *h = x->home;
  if (x->submitted) cancel(x);
  if (x->lane == LANE_INLINE && x->state == X_RUNNING) lane_abandon(x, h && h->gen != E.gen);
  if (h && h->lane_x == x) h->lane_x = NULL;
  unlink_live(x);
  x->home = NULL;
  if (x->easy) {
    /* Only a handle whose exchange went cleanly over a kept connection goes
    ** back to the pool: libcurl 7.88 never resets a handle's count of
    ** resends on a new connection, and refuses the sixth one ("Connection
    ** died, tried 5 times"); a resend always makes a new connection. */
    if (h && h->npool < XPOOL_MAX && x->state == X_DONE && x->code == CURLE_OK && x->nconnects == 0)
      h->pool[h->npool++] = x->easy;
    else
      curl_easy_cleanup(x->easy);
    x->easy = NULL;
  }
  if (x->efd >= 0) close(x->efd);
  if (x->wfd >= 0 && x->wfd != x->efd) close(x->wfd);
  if (x->pfd >= 0) close(x->pfd);
  x->efd = x->wfd = x->pfd = -1;
  free(x->url);
  free(x->post);
  free(x->location);
  x->url = x->post = x->location = NULL;
  curl_slist_free_all(x->callh);
  x->callh = NULL;
  ibuf_free(&x->body);
}

/*
** The session closes: every live exchange is stopped and detached (it will
** report kind "closed"; its buffers stay until its request is freed), then
** the handles go. In a forked child the parent's handles are left alone.
*/
void xhome_close(xhome *h, int forked) {
  while (h->live) {
    xfer *x = h->live;
    if (x->submitted) cancel(x);
    if (x->lane == LANE_INLINE && x->state == X_RUNNING) lane_abandon(x, forked);
    unlink_live(x);
    x->home = NULL;
    x->aborted = 1;
    if (x->easy && !forked) curl_easy_cleanup(x->easy);
    x->easy = NULL;
  }
  while (h->npool > 0) {
    CURL *e = h->pool[--h->npool];
    if (!forked) curl_easy_cleanup(e);
  }
  if (h->multi && !forked) curl_multi_cleanup(h->multi);
  if (h->lane && !forked) curl_multi_cleanup(h->lane);     /* closes the kept connection */
  h->lane = NULL;
  h->lane_x = NULL;
  if (h->tmpl && !forked) curl_easy_cleanup(h->tmpl);
  curl_slist_free_all(h->resolve);
  h->multi = NULL;
  h->tmpl = NULL;
  h->resolve = NULL;
}
