/*
** xfer.h -- the records of the transfer engine, shared by its files
** (src/lib/handle.c, lane.c, engine.c, transfer.c): one exchange (xfer),
** a session's transfer part (xhome), and what the caller asked for
** (callspec, filled by wire.c). Each field says who owns it. Lua-free.
*/
#ifndef IBKR_LIB_XFER_H
#define IBKR_LIB_XFER_H

#include <stddef.h>
#include <curl/curl.h>

#include "buf.h"
#include "conn.h"

/* The three prebuilt header lists of a session, one per request shape. */
enum { HL_NOBODY, HL_POST0, HL_JSON, HL_COUNT };

/* What the caller asked for, read from the arguments and the options table
** before the session is touched (wire.c). Strings are anchored on the Lua
** stack for the length of the call. */
typedef struct callspec {
  const char *method, *path, *query, *body;
  size_t mlen, plen, qlen, blen;
  int has_body;
  int shape;                  /* HL_*: what the header list must say */
  const char **hv;            /* per-call headers, "Name: value" */
  int nh;
  double timeout;             /* seconds for this exchange; 0 = the session's */
  int repeatable;             /* the caller says sending it twice is harmless */
} callspec;

struct xhome;

/*
** One exchange. Everything libcurl writes lives here, so nothing of the
** session is touched once the exchange is running, and a session closed
** in the middle (by a finaliser, say) frees nothing the exchange uses.
** The Lua thread fills it, then hands it over: while `state` is X_QUEUED or
** X_RUNNING the engine thread owns every field below `state` (guarded by
** the engine's mutex for `state` itself); from X_DONE on the Lua thread does.
*/
typedef struct xfer {
  struct xhome *home;         /* Lua thread: the session's part, NULL once detached */
  struct xfer *prev, *next;   /* Lua thread: the session's list of live exchanges */
  struct xfer *wprev, *wnext; /* engine mutex: the process's list of exchanges holding a
                              ** descriptor a waiter may watch (efd, pfd), for fork() */
  int watched;                /* engine mutex: on that list */
  char *url, *post;           /* malloc'd copies (url NULL when the session's cache lent it) */
  CURLU *uh;                  /* the URL parsed (CURLOPT_CURLU), or NULL: lent by the session's
                              ** cache to a blocking exchange, else a copy of its own (uh_owned) */
  int uh_owned;
  size_t postlen;
  struct curl_slist *callh;   /* per-call header list, or NULL */
  double deadline;            /* monotonic seconds */
  int efd, wfd;               /* completion fd (readable when done) and its write end, or -1 */
  int pfd;                    /* Lua thread: a duplicate of the lane socket handed to waiters, or -1;
                              ** once x leaves the lane, an always-readable descriptor */
  int cancel;                 /* a cancel is queued (engine mutex) */
  unsigned gen;               /* engine generation (fork) it was submitted in */
  int aborted;                /* ABORT_*: why it ended without an answer of its own */
  int submitted;              /* Lua thread: handed to the engine and not yet seen done */
  int state;                  /* X_*; guarded by the engine mutex while submitted */
  struct xfer *qnext;         /* engine queues (addq, cancelq: under engine.mu) */
  struct xfer *dnext;         /* the engine thread's own list of exchanges a lane ended (lanes_run):
                              ** never qnext, which a cancel on another thread may be setting */
  /* owned by whoever runs the transfer */
  CURL *easy;
  ibuf body;
  ibuf hdr;                   /* the final response's header block, as it came (status line first) */
  size_t max_body;
  int overflow, head;
  int hdr_done;               /* the final response's header block ended */
  int repeatable;             /* sending it twice is harmless: kept-alive connections allowed */
  int fresh;                  /* needs a connection of its own (not repeatable) */
  int lane;                   /* LANE_*: where it runs (see xhome) */
  int connect_only;           /* transfer_connect's: its handle stays in the lane once connected */
  connwatch cw;
  CURLcode code;
  char errbuf[CURL_ERROR_SIZE];
  /* facts gathered when the transfer ended, so results never need `easy` */
  long status, nconnects, header_size;
  long verify_result;         /* CURLINFO_SSL_VERIFYRESULT: the certificate check's X509_V_* code */
  long long ca_not_after;     /* the session's ca_file: earliest notAfter (epoch s), or 0 (TLS evidence) */
  curl_off_t retry_after;
  char *location;
} xfer;

enum { X_NEW, X_QUEUED, X_RUNNING, X_DONE };
/* where an exchange runs: blocking (LANE_NO), in the warm lane on the Lua thread (LANE_INLINE)
** or lent with it to the engine (LANE_LENT), or in the session's far lane on the engine (LANE_FAR) */
enum { LANE_NO, LANE_INLINE, LANE_LENT, LANE_FAR };
/* why an exchange ended without an answer of its own */
enum { ABORT_NONE, ABORT_CLOSED, ABORT_FORK };

#define LANE_SOCKS 4                /* sockets of one exchange: two families connecting, a resolver */
#define LANE_BODY_MAX 16384         /* larger bodies go to the engine (a send may have to wait) */

/*
** A multi handle of a session driven through curl_multi_socket_action
** (lane.c): what libcurl waits on -- its sockets and its timer -- is
** recorded here by libcurl's callbacks, and whoever drives the lane waits
** on that and lets libcurl act. A session has two (see xhome). The fields
** belong to the lane's driver: the Lua thread, or the engine while the
** lane is on its list.
*/
typedef struct lane {
  CURLM *multi;               /* made on first use; closing it closes the lane's connections */
  struct xhome *home;
  struct lanesock { curl_socket_t fd; int what; } *sock;   /* malloc'd: nsock of capsock */
  int nsock, capsock;
  int lost;                   /* a socket could not be recorded (out of memory): drive it blind */
  double due;                 /* monotonic seconds of libcurl's timer, < 0: none */
  int running;                /* engine: its exchanges in the lane */
  int warm;                   /* the warm lane: one connection kept, noted in home->lane_keep */
  struct lane *next;          /* engine: its list of the lanes it drives */
} lane;

/* The session's part that the transfer files keep: the handle template, a
** pool of easy handles, the multi handle of blocking calls, its two lanes,
** live exchanges. Owned by the Lua thread of the session, but for a lane
** while the engine drives it. */
#define XPOOL_MAX 4
typedef struct xhome {
  CURL *tmpl;                 /* session-wide options; duplicated into the pool */
  struct curl_slist *resolve; /* pins "localhost" to loopback addresses */
  CURL *pool[XPOOL_MAX];
  int npool;
  CURLM *multi;               /* blocking exchanges (created on first use) */
  xfer *live;
  int nlive;
  unsigned gen;               /* engine generation at creation (fork) */
  long long connects, exchanges;
  long long lane_exchanges;   /* exchanges that ran in the lane on the Lua thread */
  /*
  ** The warm lane (lane.c): the session's non-blocking exchanges, one at a
  ** time, that may be repeated (kept-alive connections allowed) and carry a
  ** small body. While it holds a kept connection, an exchange runs there on
  ** the Lua thread, stepped through curl_multi_socket_action (no hand-over
  ** to the engine: a send and a receive). When it needs a new connection
  ** (DNS, connect, TLS handshake), the lane is lent to the engine thread
  ** for that exchange. `lane_x` is the Lua thread's; `warm` and `lane_keep`
  ** belong to whoever drives the lane: the engine from the moment the
  ** exchange is queued until it is marked done (under the engine's mutex),
  ** the Lua thread otherwise.
  */
  lane warm;
  int inline_ok;              /* set by the session: certificates are not verified, so closing a
                              ** TLS connection frees no CA store (1-2 ms with the system bundle):
                              ** cheap enough for the Lua thread. Else no warm lane */
  xfer *lane_x;               /* the exchange in the warm lane, or NULL */
  curl_socket_t lane_keep;    /* socket of the warm lane's kept connection, or CURL_SOCKET_BAD */
  /*
  ** The far lane: every other non-blocking exchange of the session (a
  ** second one while the warm lane is busy, one not repeatable, a large
  ** body, all of a session that verifies), driven by the engine thread
  ** while it holds one. Its connections are the session's own, so closing
  ** the session closes them, whichever thread opened them.
  */
  lane far;
} xhome;

#endif
