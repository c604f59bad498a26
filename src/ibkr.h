/*
** ibkr.h -- internal interface between the files of the ibkr.core module.
** Only luaopen_ibkr_core (core.c) is exported from the shared object; every
** symbol declared here has hidden visibility.
**
** Who calls whom (never the other way round):
**   core.c -> session.c -> request.c -> transfer.c -> conn.c, buf.c
**   session.c, request.c -> wire.c;  request.c -> json.c, error.c
*/
#ifndef IBKR_H
#define IBKR_H

#include <pthread.h>
#include <stddef.h>
#include <curl/curl.h>
#include "lua.h"
#include "lauxlib.h"

#define IBKR_VERSION "0.1.0"

#define IBKR_API __attribute__((visibility("default")))

#define SESSION_MT "ibkr.session"
#define REQUEST_MT "ibkr.request"
#define ERROR_MT   "ibkr.error"


#define IBKR_BODY_CUT 4096          /* error objects keep this much of a body */
#define IBKR_MAX_DEPTH 256          /* JSON nesting accepted by the decoder and the encoder */
#define IBKR_MSG_MAX 512            /* bytes of an error message before it is cut */

/* ------------------------------------------------------------ buf.c */

/* growable byte buffer owned by C (never a luaL_Buffer: curl callbacks fill it) */
typedef struct ibuf {
  char *p;
  size_t n, cap;
} ibuf;

int ibuf_reserve(ibuf *b, size_t need);
int ibuf_add(ibuf *b, const char *s, size_t len);
void ibuf_free(ibuf *b);
char *ibkr_strndup(const char *s, size_t n);
size_t ibkr_strip_userinfo(const char *s, size_t n, char *out);  /* error.c; out: n + 1 bytes */

/* ------------------------------------------------------------ wire.c */

/* The three prebuilt header lists of a session, one per request shape. */
enum { HL_NOBODY, HL_POST0, HL_JSON, HL_COUNT };

/* What the caller asked for, read from the arguments and the options table
** before the session is touched. Strings are anchored on the Lua stack. */
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

int wire_base_url(lua_State *L, const char *url, char **host, long *port);
int wire_is_loopback(const char *host);
char *wire_redact(const char *url);
void wire_check_header(lua_State *L, const char *name, size_t nl, const char *val, size_t vl);
int wire_check_headers(lua_State *L, int t);
void wire_read_call(lua_State *L, int first, callspec *cs);
void wire_check_path(lua_State *L, int idx);
struct curl_slist *wire_header_list(char **uh, int nuh, int shape, const char **extra, int nextra);

/* ------------------------------------------------------------ conn.c */

int conn_watch(CURL *e);
void conn_forked(void);

/* What one exchange allows of the sockets libcurl opens for it
** (CURLOPT_OPENSOCKETDATA): `refuse` set, an open fails and `refused` says
** so (an exchange of the warm lane never connects on the Lua thread). */
typedef struct connwatch {
  int refuse, refused;
} connwatch;

/* ------------------------------------------------------------ transfer.c */

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
  char *url, *post;           /* malloc'd copies */
  size_t postlen;
  struct curl_slist *callh;   /* per-call header list, or NULL */
  double deadline;            /* monotonic seconds */
  int efd, wfd;               /* completion fd (readable when done) and its write end, or -1 */
  int pfd;                    /* Lua thread: a duplicate of the lane socket handed to waiters, or -1 */
  int cancel;                 /* a cancel is queued (engine mutex) */
  unsigned gen;               /* engine generation (fork) it was submitted in */
  int aborted;                /* the session was closed under it */
  int submitted;              /* Lua thread: handed to the engine and not yet seen done */
  int state;                  /* X_*; guarded by the engine mutex while submitted */
  struct xfer *qnext;         /* engine queues */
  /* owned by whoever runs the transfer */
  CURL *easy;
  ibuf body;
  size_t max_body;
  int overflow, head;
  int hdr_done;                /* the final response's header block ended */
  int repeatable;             /* sending it twice is harmless: kept-alive connections allowed */
  int fresh;                  /* needs a connection of its own (not repeatable) */
  int lane;                   /* LANE_*: where it runs (see xhome) */
  connwatch cw;
  CURLcode code;
  char errbuf[CURL_ERROR_SIZE];
  /* facts gathered when the transfer ended, so results never need `easy` */
  long status, nconnects, header_size;
  long verify_result;         /* CURLINFO_SSL_VERIFYRESULT: the certificate check's X509_V_* code */
  long long ca_not_after;     /* copied from the session's sconf (TLS evidence, request.c) */
  curl_off_t retry_after;
  char *location;
} xfer;

enum { X_NEW, X_QUEUED, X_RUNNING, X_DONE };
enum { LANE_NO, LANE_INLINE, LANE_LENT };

#define LANE_SOCKS 4
#define LANE_BODY_MAX 16384         /* larger bodies go to the engine (a send may have to wait) */

/* The session's part that transfer.c keeps: the handle template, a pool of
** easy handles, the multi handle of blocking calls, live exchanges. Owned by
** the Lua thread of the session. */
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
  lua_Integer connects, exchanges;
  lua_Integer lane_exchanges;   /* exchanges that ran in the lane on the Lua thread */
  /*
  ** The warm lane: a multi handle for the session's non-blocking exchanges,
  ** one at a time, that may be repeated (kept-alive connections allowed) and
  ** carry a small body. While it holds a kept connection, an exchange runs
  ** there on the Lua thread, stepped through curl_multi_socket_action (no
  ** hand-over to the engine: a send and a receive). When it needs a new
  ** connection (DNS, connect, TLS handshake), the lane is lent to the engine
  ** thread for that exchange. `lane_x` is the Lua thread's; the fields
  ** after it belong to whoever drives the lane: the engine from the moment
  ** the exchange is queued until it is marked done (under the engine's
  ** mutex), the Lua thread otherwise.
  */
  CURLM *lane;
  int inline_ok;              /* set by the session: certificates are not verified, so closing a
                              ** TLS connection frees no CA store (1-2 ms with the system bundle):
                              ** cheap enough for the Lua thread. Else no lane: the engine runs all */
  xfer *lane_x;               /* the exchange in the lane, or NULL */
  curl_socket_t lane_keep;    /* socket of the kept connection, or CURL_SOCKET_BAD: cold */
  struct lanesock { curl_socket_t fd; int what; } lsock[LANE_SOCKS];   /* what libcurl waits on */
  int nlsock;
  double lane_due;            /* monotonic seconds of libcurl's timer, < 0: none */
  struct xhome *lnext;        /* engine: its list of the lanes lent to it */
} xhome;

int xfer_global_init(void);
unsigned xfer_generation(void);
CURL *xhome_template(xhome *h, char *err, size_t errlen);
void xhome_close(xhome *h, int forked);
int xfer_open(xfer *x, xhome *h, const callspec *cs, struct curl_slist *hl, long timeout_ms);
void xfer_close(xfer *x);
void xfer_run_inline(xfer *x);
int xfer_submit(xfer *x);
int xfer_done(xfer *x);
int xfer_wait(xfer *x, double timeout);
int xfer_pollfd(xfer *x, const char **events);
double xfer_timeout(xfer *x);
double ibkr_now(void);

/* ------------------------------------------------------------ request.c */

typedef struct sconf sconf;
void request_open(lua_State *L);
struct request *request_push(lua_State *L, int sessidx, int methodidx, int pathidx);
void request_attach(lua_State *L, struct request *r, const sconf *c, xhome *h, const callspec *cs);
xfer *request_xfer(struct request *r);
int request_collect(lua_State *L, int ridx);

/* ------------------------------------------------------------ session.c */

/* Set by core.new, read-only afterwards; owned by the Lua thread. */
struct sconf {
  char *base;                 /* base URL without trailing '/' */
  size_t baselen;
  char *shown;                /* base URL without userinfo: for tostring/info */
  struct curl_slist *hl[HL_COUNT];
  char **uh;                  /* user headers, "Name: value", malloc'd */
  int nuh;
  long timeout_ms;
  size_t max_body;
  long long ca_not_after;     /* earliest notAfter (epoch s) of the ca_file's certificates, or 0 */
};

void session_open(lua_State *L);

/* ------------------------------------------------------------ json.c, error.c */

int ibkr_decode(lua_State *L, const char *s, size_t len);
int ibkr_encode(lua_State *L, int validx);
void ibkr_json_open(lua_State *L);
#define IBKR_NUMTEXT 32             /* room for ibkr_number_text's text and its NUL */
size_t ibkr_number_text(lua_State *L, int idx, char *out);

void ibkr_error_register(lua_State *L);
void ibkr_error_open(lua_State *L);
int ibkr_push_error(lua_State *L, const char *kind, const char *message,
                    int methodidx, int pathidx);
void ibkr_seti(lua_State *L, const char *k, lua_Integer v);
void ibkr_sets(lua_State *L, const char *k, const char *v);
int ibkr_fail(lua_State *L, const char *kind, const char *message, int methodidx, int pathidx);
void ibkr_error_sanitize(lua_State *L, int idx);
void ibkr_error_describe(lua_State *L, int idx);
const char *ibkr_push_printable(lua_State *L, const char *s, size_t len, size_t max);
size_t ibkr_utf8_len(const char *s, size_t avail, unsigned *cp);

/* metatable `name` with metamethods and an __index table of methods */
static inline void ibkr_createmeta(lua_State *L, const char *name, const luaL_Reg *meth,
                                   const luaL_Reg *metameth) {
  luaL_newmetatable(L, name);                   /* mt */
  luaL_setfuncs(L, metameth, 0);
  lua_newtable(L);                              /* mt, methods */
  luaL_setfuncs(L, meth, 0);
  lua_setfield(L, -2, "__index");               /* mt */
  lua_pop(L, 1);
}

/* signal.c: signal_catch, signal_caught, signal_wait (added to the module table on the stack) */
void ibkr_signal_open(lua_State *L);

/* oauth.c: OAuth 1.0a crypto on libcrypto; sets M.oauth on the module table at the top */
void ibkr_oauth_open(lua_State *L);

#endif
