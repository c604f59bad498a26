/*
** transfer.c -- the exchanges of a session, and where each one runs: a
** blocking one in place on the caller's thread (in the warm lane when it
** is free, else on the session's own multi handle); a non-blocking one in
** the warm lane on the caller's thread when the lane holds a kept
** connection, else on the engine thread (the warm lane lent to it, or the
** session's far lane). Then stepping, waiting, the descriptor a waiter
** watches, and closing an exchange or a whole session. Every way an
** exchange ends leaves that descriptor readable, so every waiter wakes.
** Why blocking calls stay in place: a hand-over to another thread costs
** more than the exchange on loopback.
** Called by: session.c, request.c.
** Calls: lib/lane.c, lib/engine.c, lib/handle.c, lib/conn.c, lib/buf.c.
** Lua-free, like every file in src/lib/.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "conn.h"
#include "engine.h"
#include "handle.h"
#include "lane.h"
#include "transfer.h"

/* an exchange in its empty state, owning nothing (the newprefile way) */
void transfer_init(xfer *x) {
  memset(x, 0, sizeof *x);
  x->efd = x->wfd = x->pfd = -1;
  x->state = X_NEW;
}

/* h starts: no lane yet, and a template for its handles (NULL, with the
** reason in err, when libcurl refuses an option); the session adds its own */
CURL *transfer_home_open(xhome *h, char *err, size_t errlen) {
  h->gen = engine_generation();
  h->lane_keep = CURL_SOCKET_BAD;
  lane_init(&h->warm, h, 1);
  lane_init(&h->far, h, 0);
  return h->tmpl = handle_template(err, errlen);
}

/*
** Make x the exchange cs of home h: it keeps o's URL and per-call header
** list (even when this fails) and a copy of the body, gets an easy handle
** set for the exchange, and goes on h's list of live exchanges. Returns 0
** when out of memory, or when libcurl refused an option (x->code says
** which; x is then closed, never sent with what a pooled handle kept from
** its previous exchange). Runs no Lua code.
*/
int transfer_open(xfer *x, xhome *h, const callspec *cs, const xopts *o) {
  const char *url = o->url ? o->url : o->url_ref;
  x->url = o->url;
  x->callh = o->callh;
  x->repeatable = cs->repeatable;
  x->max_body = o->max_body;
  x->ca_not_after = o->ca_not_after;
  if (url == NULL || (cs->nh && x->callh == NULL)) return 0;
  if (o->uh) {
    x->uh_owned = !o->lend_uh;
    if ((x->uh = o->lend_uh ? o->uh : curl_url_dup(o->uh)) == NULL) return 0;
  }
  if (cs->has_body) {
    x->post = buf_strndup(cs->body, cs->blen);
    x->postlen = cs->blen;
    if (x->post == NULL) return 0;
  }
  if (!handle_take(x, h)) return 0;
  x->home = h;
  x->next = h->live;
  if (h->live) h->live->prev = x;
  h->live = x;
  h->nlive++;
  h->exchanges++;
  x->deadline = clock_now() + (double)o->timeout_ms / 1000.0;
  x->code = handle_set(x, cs, url, o->headers, o->timeout_ms);
  if (x->code == CURLE_OK) return 1;
  transfer_close(x);                          /* its handle is not pooled: the exchange did not run */
  return 0;
}

/* ------------------------------------------------------------ running */

/* x stops running in the warm lane here (it ended, went to the engine, or
** was stopped): a waiter still watching the duplicate of the lane socket
** wakes at once, and the duplicate no longer holds the connection open */
static void leave_lane(xfer *x) {
  if (x->pfd >= 0 && engine_ready_fd() >= 0) conn_replace(x->pfd, engine_ready_fd());
}

/* x, running in the warm lane here, is stopped (its connection is closed);
** in a forked child the parent's handle is not touched */
static void abandon(xfer *x, int forked) {
  if (x->home && !forked) lane_drop(&x->home->warm, x);
  if (forked) x->easy = NULL;
  leave_lane(x);
  x->code = CURLE_ABORTED_BY_CALLBACK;
  x->state = X_DONE;
}

/* x given up in a blocking wait: `stop` said so (a signal asked Lua to stop) */
static void stopped(xfer *x) {
  x->code = CURLE_ABORTED_BY_CALLBACK;
  snprintf(x->errbuf, sizeof x->errbuf, "interrupted");
}

/* blocking, in the lane when x may take it: x may connect there (its caller
** waits anyway), and leaves its connection to the lane's next exchanges,
** cooperative ones included. 0: the lane is not free (run x elsewhere);
** 1: x ran there; 2: given up (stop said so) */
static int perform_in_lane(xfer *x, transfer_stopfn stop, void *ud) {
  if (!lane_take(x)) return 0;
  if (!lane_add(&x->home->warm, x, 0)) {
    x->home->lane_x = NULL;
    return 0;
  }
  x->lane = LANE_INLINE;
  x->state = X_RUNNING;
  if (transfer_wait(x, -1, stop, ud)) return 1;
  abandon(x, 0);
  stopped(x);
  return 2;
}

/* blocking: drive x on the session's own multi handle until it ends, the
** way curl_easy_perform does (the connections stay in that multi's cache).
** Between its waits it asks stop(ud) (when given) whether to give up.
** Returns 1 when x ended, 0 when it was given up (x is done then too). */
int transfer_perform(xfer *x, transfer_stopfn stop, void *ud) {
  xhome *h = x->home;
  CURLMsg *m;
  int running, left, ended = 1;
  switch (perform_in_lane(x, stop, ud)) {
    case 1: return 1;
    case 2: return 0;
  }
  if (h->multi == NULL && (h->multi = curl_multi_init()) != NULL)
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 4L);
  if (h->multi == NULL || curl_multi_add_handle(h->multi, x->easy) != CURLM_OK) {
    x->code = CURLE_OUT_OF_MEMORY;
    x->state = X_DONE;
    return 1;
  }
  for (;;) {
    if (curl_multi_perform(h->multi, &running) != CURLM_OK) {
      x->code = CURLE_OUT_OF_MEMORY;
      break;
    }
    if ((m = curl_multi_info_read(h->multi, &left)) != NULL && m->msg == CURLMSG_DONE) {
      handle_gather(x, m->data.result);
      break;
    }
    curl_multi_poll(h->multi, NULL, 0, 1000, NULL);   /* a signal ends it early */
    if (stop && stop(ud)) {
      stopped(x);
      ended = 0;
      break;
    }
  }
  curl_multi_remove_handle(h->multi, x->easy);
  x->state = X_DONE;
  return ended;
}

/* Step x, running in the lane on this thread. On return it may have ended,
** or gone to the engine: its connection was gone, and a new one may not be
** opened here (nothing was answered on the old one, and x is repeatable) */
static void step_in_lane(xfer *x) {
  xhome *h = x->home;
  int step;
  if (h == NULL || h->gen != engine_generation()) {   /* a parent's exchange seen in a forked child */
    x->easy = h && h->gen != engine_generation() ? NULL : x->easy;
    x->code = CURLE_ABORTED_BY_CALLBACK;
    x->aborted = ABORT_FORK;
    x->state = X_DONE;
    return;
  }
  if ((step = lane_step(x)) == LANE_RUNS) return;
  leave_lane(x);
  if (step == LANE_GONE && handle_restart(x, clock_now())) {
    x->lane = LANE_LENT;
    engine_queue(x);
  }
}

/* non-blocking: x runs in its session's warm lane when it fits there (on
** this thread when the lane has a kept connection, else lent to the
** engine), else in the session's far lane on the engine. Returns 0 when x
** could not start (it is then done, with the error). */
int transfer_submit(xfer *x) {
  xhome *h = x->home;
  if (x->postlen <= LANE_BODY_MAX && lane_take(x)) {
    x->lane = LANE_LENT;
    if (h->lane_keep != CURL_SOCKET_BAD && lane_add(&h->warm, x, 1)) {
      x->lane = LANE_INLINE;
      x->state = X_RUNNING;
      step_in_lane(x);
      return 1;
    }
  } else {
    x->lane = LANE_FAR;
    if (!lane_make(&h->far)) {
      x->code = CURLE_OUT_OF_MEMORY;
      x->state = X_DONE;
      return 0;
    }
  }
  return engine_queue(x);
}

/* whether x has ended (a step of it, when it runs in the lane here); an
** xfer of the parent process seen in a forked child has ended too (aborted) */
int transfer_done(xfer *x) {
  int st;
  if (x->lane == LANE_INLINE && x->state == X_RUNNING) step_in_lane(x);
  if (!x->submitted) {
    st = x->state == X_NEW ? X_DONE : x->state;
  } else {
    st = engine_state(x);
    if (st == X_DONE) x->submitted = 0;
  }
  if (st == X_DONE && x->home && x->home->lane_x == x) x->home->lane_x = NULL;
  return st == X_DONE;
}

/* x, running in the warm lane here: a duplicate of the socket libcurl
** waits on, open until x is closed, so that a waiter never watches a
** number libcurl closed (the session closed from elsewhere) and reused; the
** socket itself when no duplicate can be made; -1 while libcurl waits only
** for its timer */
static int lane_pollfd(xfer *x, const char **events) {
  curl_socket_t fd = lane_socket(&x->home->warm, events);
  if (fd == CURL_SOCKET_BAD) return -1;
  if (x->pfd < 0) {
    if ((x->pfd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) return fd;
    engine_watch(x);
  }
  return x->pfd;
}

/* the descriptor to wait on before looking at x again, and for what
** (*events: "r", "w" or "rw"); -1: none (wait for transfer_timeout). Once x
** ended it is readable: its completion descriptor (written on every way to
** the end), or the always-readable one when it has none. */
int transfer_pollfd(xfer *x, const char **events) {
  *events = "r";
  if (x->lane == LANE_INLINE && x->state == X_RUNNING) return lane_pollfd(x, events);
  if (x->efd < 0 && x->state == X_DONE) return engine_ready_fd();
  return x->efd;
}

/* seconds after which x should be looked at even without a wake-up: its
** own deadline plus a margin (the engine reports a timeout through the
** descriptor; never below 10 ms), or libcurl's timer in the lane */
double transfer_timeout(xfer *x) {
  double now = clock_now(), left = x->deadline - now + 0.1;
  if (left < 0.01) left = 0.01;
  if (x->lane == LANE_INLINE && x->state == X_RUNNING && x->home && x->home->warm.due >= 0 &&
      x->home->warm.due - now < left)
    left = x->home->warm.due > now ? x->home->warm.due - now : 0;
  return left;
}

/* wait until x ends or `timeout` seconds passed (< 0: no limit), sleeping
** on its completion fd (or its sockets, in the lane); returns whether it
** ended. A signal that interrupts a sleep ends the wait when stop(ud) (if
** given) says so. */
int transfer_wait(xfer *x, double timeout, transfer_stopfn stop, void *ud) {
  double end = timeout >= 0 ? clock_now() + timeout : 0;
  while (!transfer_done(x)) {
    struct pollfd p[LANE_SOCKS];
    int n = 0, ms = 1000;
    if (timeout >= 0) {
      double left = end - clock_now();
      if (left <= 0) return 0;
      if (left * 1000 < ms) ms = (int)(left * 1000) + 1;
    }
    if (x->lane == LANE_INLINE) {
      double t = transfer_timeout(x) * 1000;
      n = lane_pollfds(&x->home->warm, p, LANE_SOCKS);
      if (t < ms) ms = (int)t + (t > (int)t);
    } else {
      if (x->efd < 0) return 0;
      p[n++] = (struct pollfd){ .fd = x->efd, .events = POLLIN };
    }
    if (poll(p, (nfds_t)n, ms) < 0 && errno == EINTR && stop && stop(ud)) return 0;
  }
  return 1;
}

/* ------------------------------------------------------------ closing */

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
void transfer_close(xfer *x) {
  xhome *h = x->home;
  if (x->submitted) engine_cancel(x);
  if (x->lane == LANE_INLINE && x->state == X_RUNNING) abandon(x, h && h->gen != engine_generation());
  if (h && h->lane_x == x) h->lane_x = NULL;
  unlink_live(x);
  x->home = NULL;
  handle_give(x, h);
  if (x->watched) engine_unwatch(x);
  if (x->efd >= 0) close(x->efd);
  if (x->wfd >= 0 && x->wfd != x->efd) close(x->wfd);
  if (x->pfd >= 0) close(x->pfd);
  x->efd = x->wfd = x->pfd = -1;
  free(x->url);
  free(x->post);
  free(x->location);
  x->url = x->post = x->location = NULL;
  if (x->uh_owned) curl_url_cleanup(x->uh);
  x->uh = NULL;
  x->uh_owned = 0;
  curl_slist_free_all(x->callh);
  x->callh = NULL;
  buf_free(&x->body);
  buf_free(&x->hdr);
}

/*
** The session closes: every live exchange is stopped and detached (it will
** report kind "closed"; its buffers stay until its request is freed), then
** the handles go. In a forked child the parent's handles are left alone.
*/
void transfer_home_close(xhome *h, int forked) {
  while (h->live) {
    xfer *x = h->live;
    if (x->submitted) engine_cancel(x);
    if (x->lane == LANE_INLINE && x->state == X_RUNNING) abandon(x, forked);
    unlink_live(x);
    x->home = NULL;
    x->aborted = ABORT_CLOSED;
    if (x->easy && !forked) curl_easy_cleanup(x->easy);
    x->easy = NULL;
  }
  while (h->npool > 0) {
    CURL *e = h->pool[--h->npool];
    if (!forked) curl_easy_cleanup(e);
  }
  if (h->multi && !forked) curl_multi_cleanup(h->multi);
  lane_close(&h->warm, forked);               /* closes the kept connection */
  lane_close(&h->far, forked);                /* and those the engine opened for the session */
  h->lane_x = NULL;
  if (h->tmpl && !forked) curl_easy_cleanup(h->tmpl);
  curl_slist_free_all(h->resolve);
  h->multi = NULL;
  h->tmpl = NULL;
  h->resolve = NULL;
}
