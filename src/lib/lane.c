/*
** lane.c -- a session's warm lane: a libcurl multi handle driven through
** curl_multi_socket_action, for the session's non-blocking exchanges, one
** at a time, that may be sent again and carry a small body (see xhome in
** xfer.h). While it holds a kept connection, an exchange runs here on the
** caller's thread (a step is a send or a receive and the parse: no
** hand-over to the engine, whose three context switches cost more than the
** exchange on loopback). It may never open a socket there (conn.c refuses):
** when its kept connection turns out gone, the exchange must start over
** elsewhere, and transfer.c lends the lane to the engine thread, which then
** drives it with the same functions (lane_act, lane_collect, lane_waitfds).
** Called by: lib/transfer.c, lib/engine.c.
** Calls: lib/handle.c.
** Lua-free, like every file in src/lib/.
*/
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "clock.h"
#include "handle.h"
#include "lane.h"

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
  h->lane_due = ms < 0 ? -1.0 : clock_now() + (double)ms / 1000.0;
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

/* whether x may take its session's lane now: the lane is free, x may be
** sent again (a kept connection), and a close of its connection costs
** little here (inline_ok). x then holds it. */
int lane_take(xfer *x) {
  xhome *h = x->home;
  if (!h->inline_ok || x->fresh || h->lane_x != NULL || !lane_make(h)) return 0;
  h->lane_x = x;
  curl_easy_setopt(x->easy, CURLOPT_CLOSESOCKETDATA, (void *)&h->lane_keep);
  return 1;
}

/* x, which holds the lane, goes into its multi handle; `refuse`: it may
** not open a socket (a step on the Lua thread). 0 when libcurl refuses. */
int lane_add(xfer *x, int refuse) {
  x->cw.refuse = refuse;
  if (curl_multi_add_handle(x->home->lane, x->easy) == CURLM_OK) return 1;
  x->cw.refuse = 0;
  return 0;
}

/* let libcurl act in the lane: on each socket it waits on (re: their
** readiness, parallel to lsock; NULL: not looked at, presumed ready for
** what libcurl waits for, which costs a read or a send that would block
** when it is not: what libcurl's own look would cost), and on its timer
** when due. Run by the lane's driver only. */
void lane_act(xhome *h, const unsigned short *re) {
  struct lanesock s[LANE_SOCKS];
  int n = h->nlsock, running;
  memcpy(s, h->lsock, sizeof s[0] * (size_t)n);          /* the actions change lsock */
  for (int i = 0; i < n; i++)
    if (re == NULL || re[i] != 0)
      curl_multi_socket_action(h->lane, s[i].fd, re ? cselect(re[i]) : cwanted(s[i].what), &running);
  if (h->lane_due >= 0 && clock_now() >= h->lane_due) {
    h->lane_due = -1;
    curl_multi_socket_action(h->lane, CURL_SOCKET_TIMEOUT, 0, &running);
  }
}

/* the exchange that ended in the lane, gathered and taken out, or NULL;
** notes whether its connection was kept (the lane is warm) */
xfer *lane_collect(xhome *h) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(h->lane, &left)) != NULL) {
    xfer *x = NULL;
    CURLcode code = m->data.result;
    if (m->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    handle_gather(x, code);
    h->lane_keep = CURL_SOCKET_BAD;
    if (x->code == CURLE_OK) curl_easy_getinfo(x->easy, CURLINFO_ACTIVESOCKET, &h->lane_keep);
    curl_multi_remove_handle(h->lane, x->easy);
    return x;
  }
  return NULL;
}

/*
** Step x, running in the lane on this thread: libcurl acts on its sockets
** (presumed ready). LANE_ENDED: x is done. LANE_GONE: its kept connection
** turned out gone, and a new one may not be opened here (x is out of the
** lane; nothing was answered on the old connection, and x is repeatable:
** it may be sent again). LANE_RUNS: neither yet.
*/
int lane_step(xfer *x) {
  xhome *h = x->home;
  lane_act(h, NULL);
  if (lane_collect(h) == NULL) return LANE_RUNS;
  if (x->cw.refused) return LANE_GONE;
  x->state = X_DONE;
  h->lane_exchanges++;
  return LANE_ENDED;
}

/* a lane's sockets as extra descriptors of the engine's curl_multi_poll
** (at most LANE_SOCKS into w); lowers *ms to its timer. Returns how many. */
int lane_waitfds(xhome *h, struct curl_waitfd *w, int *ms, double now) {
  for (int i = 0; i < h->nlsock; i++) {
    w[i].fd = h->lsock[i].fd;
    w[i].events = wait_events(h->lsock[i].what);
    w[i].revents = 0;
  }
  if (h->lane_due >= 0) {
    double left = (h->lane_due - now) * 1000;
    int l = left <= 0 ? 0 : left >= 1000 ? 1000 : (int)left + 1;
    if (l < *ms) *ms = l;
  }
  return h->nlsock;
}

/* a lane's sockets for poll(2) (at most LANE_SOCKS into p); how many */
int lane_pollfds(xhome *h, struct pollfd *p) {
  for (int i = 0; i < h->nlsock; i++)
    p[i] = (struct pollfd){ .fd = h->lsock[i].fd, .events = poll_events(h->lsock[i].what) };
  return h->nlsock;
}

/* x, running in the lane here: the descriptor a waiter watches, and for
** what (*events). A duplicate of the socket, open until x is closed: a
** waiter never watches a number libcurl closed (the session closed from
** elsewhere) and reused. -1 while libcurl waits only for its timer. */
int lane_pollfd(xfer *x, const char **events) {
  xhome *h = x->home;
  if (h == NULL || h->nlsock == 0) return -1;
  *events = h->lsock[0].what == CURL_POLL_OUT ? "w" : h->lsock[0].what == CURL_POLL_INOUT ? "rw" : "r";
  if (x->pfd < 0) x->pfd = fcntl(h->lsock[0].fd, F_DUPFD_CLOEXEC, 0);
  return x->pfd;
}

/* x, running in its session's lane, leaves it (its connection is closed
** by libcurl); run by whoever drives the lane */
void lane_drop(xfer *x) {
  curl_multi_remove_handle(x->home->lane, x->easy);
  x->home->lane_keep = CURL_SOCKET_BAD;
}

/* x, running in the lane here, is stopped (its connection is closed). In
** a forked child the parent's handles are not touched. */
void lane_abandon(xfer *x, int forked) {
  xhome *h = x->home;
  if (h && !forked) {
    lane_drop(x);
    /* the connection is dropped: a waiter on the duplicate wakes at once
    ** (EOF), as it would on a completion descriptor */
    if (x->pfd >= 0) shutdown(x->pfd, SHUT_RDWR);
  }
  if (forked) x->easy = NULL;                 /* the parent's handle: never touched */
  x->code = CURLE_ABORTED_BY_CALLBACK;
  x->state = X_DONE;
}

/* the session closes: the lane and its kept connection go */
void lane_close(xhome *h, int forked) {
  if (h->lane && !forked) curl_multi_cleanup(h->lane);
  h->lane = NULL;
  h->lane_x = NULL;
}
