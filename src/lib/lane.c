/*
** lane.c -- a session's lanes: libcurl multi handles driven through
** curl_multi_socket_action, so that whoever drives one waits only on what
** libcurl waits on there (its sockets, its timer) and lets libcurl act.
**
** The warm lane runs the session's non-blocking exchanges one at a time
** when they may be sent again and carry a small body (see xhome in
** xfer.h). While it holds a kept connection, an exchange runs here on the
** caller's thread (a step is a send or a receive and the parse: no
** hand-over to the engine, whose three context switches cost more than
** the exchange on loopback). It may never open a socket there (conn.c
** refuses): when its kept connection turns out gone, the exchange must
** start over elsewhere, and transfer.c lends the lane to the engine
** thread, which then drives it with the same functions.
** The far lane runs every other non-blocking exchange of the session, on
** the engine thread; its connections are the session's, closed with it.
** Called by: lib/transfer.c, lib/engine.c.
** Calls: lib/handle.c.
** Lua-free, like every file in src/lib/.
*/
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "handle.h"
#include "lane.h"

/* what libcurl waits on in a lane (CURLMOPT_SOCKETFUNCTION) */
static int lane_on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
  lane *l = userp;
  int i = 0;
  (void)e;
  (void)socketp;
  while (i < l->nsock && l->sock[i].fd != fd) i++;
  if (what == CURL_POLL_REMOVE) {
    if (i < l->nsock) l->sock[i] = l->sock[--l->nsock];
    return 0;
  }
  if (i == l->nsock && l->nsock == l->capsock) {
    int cap = l->capsock ? l->capsock * 2 : LANE_SOCKS;
    struct lanesock *v = realloc(l->sock, sizeof *v * (size_t)cap);
    if (v == NULL) {
      l->lost = 1;                            /* driven blind from now on (lane_act) */
      return 0;
    }
    l->sock = v;
    l->capsock = cap;
  }
  if (i == l->nsock) l->sock[l->nsock++].fd = fd;
  l->sock[i].what = what;
  return 0;
}

/* when libcurl wants a timeout action in a lane (CURLMOPT_TIMERFUNCTION) */
static int lane_on_timer(CURLM *m, long ms, void *userp) {
  lane *l = userp;
  (void)m;
  l->due = ms < 0 ? -1.0 : clock_now() + (double)ms / 1000.0;
  return 0;
}

/* l, of session h, starts empty: no multi handle until lane_make */
void lane_init(lane *l, xhome *h, int warm) {
  memset(l, 0, sizeof *l);
  l->home = h;
  l->warm = warm;
  l->due = -1;
}

/* the lane's multi handle, made on first use; 0 when out of memory. The
** warm lane keeps one connection; the far lane a few, for calls side by side */
int lane_make(lane *l) {
  if (l->multi) return 1;
  if ((l->multi = curl_multi_init()) == NULL) return 0;
  curl_multi_setopt(l->multi, CURLMOPT_SOCKETFUNCTION, lane_on_socket);
  curl_multi_setopt(l->multi, CURLMOPT_SOCKETDATA, (void *)l);
  curl_multi_setopt(l->multi, CURLMOPT_TIMERFUNCTION, lane_on_timer);
  curl_multi_setopt(l->multi, CURLMOPT_TIMERDATA, (void *)l);
  curl_multi_setopt(l->multi, CURLMOPT_MAXCONNECTS, l->warm ? 1L : 4L);
  return 1;
}

/* poll(2) events for what libcurl waits on. A socket it wants writable is
** watched for input too: a refused connect shows only as input (EOF). */
static short poll_events(int what) {
  return (short)(((what & CURL_POLL_OUT) ? POLLOUT | POLLIN : 0) | ((what & CURL_POLL_IN) ? POLLIN : 0));
}

/* what libcurl waits for on a socket, as CURL_CSELECT_* */
static int cwanted(int what) {
  return ((what & CURL_POLL_IN) ? CURL_CSELECT_IN : 0) | ((what & CURL_POLL_OUT) ? CURL_CSELECT_OUT : 0);
}

/* CURL_CSELECT_* of what poll(2) saw on a socket; an error or a hang-up
** is reported as what libcurl waits for (its read or send finds it) */
static int cselect(short revents, short events) {
  int ev = ((revents & POLLIN) ? CURL_CSELECT_IN : 0) | ((revents & POLLOUT) ? CURL_CSELECT_OUT : 0);
  if (revents & (POLLERR | POLLHUP | POLLNVAL))
    ev |= ((events & POLLOUT) ? CURL_CSELECT_OUT : 0) | CURL_CSELECT_IN | CURL_CSELECT_ERR;
  return ev;
}

/* whether x may take its session's warm lane now: the lane is free, x may
** be sent again (a kept connection), and a close of its connection costs
** little here (inline_ok). x then holds it. */
int lane_take(xfer *x) {
  xhome *h = x->home;
  if (!h->inline_ok || x->fresh || h->lane_x != NULL || !lane_make(&h->warm)) return 0;
  h->lane_x = x;
  curl_easy_setopt(x->easy, CURLOPT_CLOSESOCKETDATA, (void *)&h->lane_keep);
  return 1;
}

/* x goes into lane l's multi handle; `refuse`: it may not open a socket
** (a step on the Lua thread). 0 when libcurl refuses. Run by the lane's
** driver. */
int lane_add(lane *l, xfer *x, int refuse) {
  x->cw.refuse = refuse;
  if (curl_multi_add_handle(l->multi, x->easy) == CURLM_OK) return 1;
  x->cw.refuse = 0;
  return 0;
}

/*
** Let libcurl act in lane l: on each socket p[0..n) (as poll(2) saw them:
** a copy of the lane's sockets taken before the wait; p NULL: not looked
** at, presumed ready for what libcurl waits for, which costs a read or a
** send that would block when it is not: what libcurl's own look would
** cost), and on its timer when due. A lane that lost track of a socket is
** driven blind. Run by the lane's driver only.
*/
void lane_act(lane *l, const struct pollfd *p, int n) {
  struct lanesock own[LANE_SOCKS];
  int running;
  if (p == NULL) {                             /* the actions change l->sock: act on a copy */
    n = l->nsock < LANE_SOCKS ? l->nsock : LANE_SOCKS;
    if (n > 0) memcpy(own, l->sock, sizeof own[0] * (size_t)n);
    for (int i = 0; i < n; i++) curl_multi_socket_action(l->multi, own[i].fd, cwanted(own[i].what), &running);
  }
  for (int i = 0; p && i < n; i++)
    if (p[i].revents) curl_multi_socket_action(l->multi, p[i].fd, cselect(p[i].revents, p[i].events), &running);
  if ((l->due >= 0 && clock_now() >= l->due) || l->lost) {
    l->due = -1;
    curl_multi_socket_action(l->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  }
  if (l->lost) curl_multi_perform(l->multi, &running);
}

/* an exchange that ended in lane l, gathered and taken out, or NULL; the
** warm lane notes whether its connection was kept (the lane is warm) */
xfer *lane_collect(lane *l) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(l->multi, &left)) != NULL) {
    xfer *x = NULL;
    CURLcode code = m->data.result;
    if (m->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    handle_gather(x, code);
    if (l->warm) {                            /* the kept connection's socket, or cold */
      xhome *h = l->home;
      if (x->code != CURLE_OK)
        h->lane_keep = CURL_SOCKET_BAD;
      else if (x->nconnects > 0 || h->lane_keep == CURL_SOCKET_BAD)  /* else it is the one kept */
        curl_easy_getinfo(x->easy, CURLINFO_ACTIVESOCKET, &h->lane_keep);   /* (a walk of the cache) */
    }
    /* a CONNECT_ONLY handle stays: removing it would close its connection */
    if (!(x->connect_only && x->code == CURLE_OK)) curl_multi_remove_handle(l->multi, x->easy);
    return x;
  }
  return NULL;
}

/*
** Step x, running in the warm lane on this thread: libcurl acts on its
** sockets (presumed ready). LANE_ENDED: x is done. LANE_GONE: its kept
** connection turned out gone, and a new one may not be opened here (x is
** out of the lane; nothing was answered on the old connection, and x is
** repeatable: it may be sent again). LANE_RUNS: neither yet.
*/
int lane_step(xfer *x) {
  xhome *h = x->home;
  lane_act(&h->warm, NULL, 0);
  if (lane_collect(&h->warm) == NULL) return LANE_RUNS;
  if (x->cw.refused) return LANE_GONE;
  x->state = X_DONE;
  h->lane_exchanges++;
  return LANE_ENDED;
}

/* lane l's sockets for poll(2), at most room of them into p; how many */
int lane_pollfds(const lane *l, struct pollfd *p, int room) {
  int n = l->nsock < room ? l->nsock : room;
  for (int i = 0; i < n; i++)
    p[i] = (struct pollfd){ .fd = l->sock[i].fd, .events = poll_events(l->sock[i].what) };
  return n;
}

/* ms lowered to when lane l's timer is due (1 ms when it drives blind) */
int lane_ms(const lane *l, double now, int ms) {
  if (l->lost) return ms < 1 ? ms : 1;
  if (l->due >= 0) {
    double left = (l->due - now) * 1000;
    int due = left <= 0 ? 0 : left >= ms ? ms : (int)left + 1;
    if (due < ms) ms = due;
  }
  return ms;
}

/* the socket a waiter of the warm lane's exchange watches, and for what
** (*events); CURL_SOCKET_BAD while libcurl waits only for its timer */
curl_socket_t lane_socket(const lane *l, const char **events) {
  if (l->nsock == 0) return CURL_SOCKET_BAD;
  *events = l->sock[0].what == CURL_POLL_OUT ? "w" : l->sock[0].what == CURL_POLL_INOUT ? "rw" : "r";
  return l->sock[0].fd;
}

/* x, running in lane l, leaves it (its connection is closed by libcurl);
** run by the lane's driver */
void lane_drop(lane *l, xfer *x) {
  curl_multi_remove_handle(l->multi, x->easy);
  if (l->warm) l->home->lane_keep = CURL_SOCKET_BAD;
}

/* l's multi handle, taken out of l (which is empty again) with its
** callbacks gone, so it can be freed on another thread after l is; NULL
** when l has none */
CURLM *lane_release(lane *l) {
  CURLM *m = l->multi;
  if (m) {
    curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, NULL);
    curl_multi_setopt(m, CURLMOPT_SOCKETDATA, NULL);
    curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, NULL);
    curl_multi_setopt(m, CURLMOPT_TIMERDATA, NULL);
  }
  l->multi = NULL;
  free(l->sock);
  lane_init(l, l->home, l->warm);
  return m;
}

/* the session closes: the lane and its connections go (in a forked child
** the parent's handle is left alone) */
void lane_close(lane *l, int forked) {
  if (l->multi && !forked) curl_multi_cleanup(l->multi);
  free(l->sock);
  lane_init(l, l->home, l->warm);
}
