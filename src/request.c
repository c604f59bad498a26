/*
** request.c -- the request class: one exchange of a session, blocking
** (s:perform runs it in place) or not (s:start hands it over; the caller
** steps it, or waits on its descriptor: :pollfd(), :events(), :timeout()
** follow cqueues' pollable convention). The outcome becomes a Lua value or
** an error object here, once, then is cached.
** Adds to the module: the "ibkr.request" class.
** Called by: core.c, session.c.
** Calls: message.c, json.c, error.c, signal.c, lib/transfer.c.
*/
#include <sched.h>
#include <string.h>
#include <time.h>
#include <openssl/x509_vfy.h>

#include "ibkr.h"
#include "lib/clock.h"

typedef struct request {
  xfer x;                     /* the exchange (lib/transfer.c) */
  double wnext, wdue;         /* step(): the wait it suggests next, when it told the caller */
  int collected;              /* result() built and cached in the user values */
  int closed;                 /* req:close() before the result was built */
  long status;                /* of a successful result */
  size_t bytes;               /* of a successful result: its body's length */
} request;

/* user values of a request userdata */
enum { RUV_SESSION = 1, RUV_METHOD, RUV_PATH, RUV_RESULT, RUV_ERROR, RUV_HEAD, RUV_COUNT = RUV_HEAD };

static request *torequest(lua_State *L, int idx) {
  return (request *)luaL_checkudata(L, idx, REQUEST_MT);
}

xfer *request_xfer(struct request *r) { return &r->x; }

/*
** Push an empty request (the newprefile way: with its metatable, before it
** owns anything) holding the session, method and path. Allocation may run
** finalisers: the caller checks the session after this, not before.
*/
struct request *request_push(lua_State *L, int sessidx, int methodidx, int pathidx) {
  request *r = lua_newuserdatauv(L, sizeof(request), RUV_COUNT);
  memset(r, 0, sizeof *r);
  transfer_init(&r->x);
  r->wnext = 0.0002;
  luaL_setmetatable(L, REQUEST_MT);
  lua_pushvalue(L, sessidx);
  lua_setiuservalue(L, -2, RUV_SESSION);
  lua_pushvalue(L, methodidx);
  lua_setiuservalue(L, -2, RUV_METHOD);
  lua_pushvalue(L, pathidx);
  lua_setiuservalue(L, -2, RUV_PATH);
  return r;
}

/* ------------------------------------------------------------ outcomes */

static int kind_of(CURLcode c, int overflow) {
  switch (c) {
    case CURLE_COULDNT_RESOLVE_PROXY: case CURLE_COULDNT_RESOLVE_HOST: case CURLE_COULDNT_CONNECT:
      return KIND_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
      return KIND_TIMEOUT;
    case CURLE_SSL_CONNECT_ERROR: case CURLE_PEER_FAILED_VERIFICATION: case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER: case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED: case CURLE_SSL_ENGINE_INITFAILED: case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR: case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS: case CURLE_SSL_SHUTDOWN_FAILED: case CURLE_USE_SSL_FAILED:
      return KIND_TLS;
    case CURLE_FILESIZE_EXCEEDED:
      return KIND_TOO_LARGE;
    case CURLE_WRITE_ERROR:
      return overflow ? KIND_TOO_LARGE : KIND_PROTOCOL;
    default:
      return KIND_PROTOCOL;
  }
}

/* the body cut for error objects, plus the decoded body when it is JSON */
static void add_body(lua_State *L, const xfer *x) {
  size_t n = x->body.n;
  if (n == 0) return;
  lua_pushlstring(L, x->body.p, n < IBKR_BODY_CUT ? n : IBKR_BODY_CUT);
  lua_setfield(L, -2, "body");
  if (json_decode(L, x->body.p, n)) lua_setfield(L, -2, "data");
  else lua_pop(L, 1);
}

/*
** The evidence of a refused certificate (curl code 60): verify_result, the
** X509_V_* code of the check (10: expired), and when the check failed for
** an expired certificate and the ca_file holds one, not_after: its end of
** validity, UTC, ISO 8601. The policy layer names the cause from them.
*/
static void add_tls_evidence(lua_State *L, const xfer *x) {
  char when[32];
  time_t t = (time_t)x->ca_not_after;
  struct tm tm;
  if (x->code != CURLE_PEER_FAILED_VERIFICATION || x->verify_result == X509_V_OK) return;
  error_seti(L, "verify_result", (lua_Integer)x->verify_result);
  if (x->verify_result != X509_V_ERR_CERT_HAS_EXPIRED || x->ca_not_after <= 0 || t >= time(NULL)) return;
  if (gmtime_r(&t, &tm) && strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm) > 0)
    error_sets(L, "not_after", when);
}

/* nil, err for a transfer that failed below HTTP. A connection dropped or
** reset before any response byte is marked no_response: nothing of the
** request can have been answered, the policy layer may send it again. */
static int push_transfer_error(lua_State *L, const xfer *x, int methodidx, int pathidx) {
  int kind = kind_of(x->code, x->overflow);
  char msg[CURL_ERROR_SIZE + 64];
  if (kind == KIND_TOO_LARGE)
    snprintf(msg, sizeof msg, "response body larger than max_body (%lu bytes)", (unsigned long)x->max_body);
  else
    snprintf(msg, sizeof msg, "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->code));
  lua_pushnil(L);
  error_push(L, kind, msg, methodidx, pathidx);
  error_seti(L, "curl_code", (lua_Integer)x->code);
  if (x->status > 0) error_seti(L, "status", x->status);
  add_tls_evidence(L, x);
  if (x->code == CURLE_GOT_NOTHING ||
      ((x->code == CURLE_SEND_ERROR || x->code == CURLE_RECV_ERROR) && x->header_size == 0)) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "no_response");
  }
  return 2;
}

/* nil, err for a response that is not a 2xx: status, retry_after, body,
** data, location, then the message from all of them (message.c) */
static int push_http_error(lua_State *L, const xfer *x, int methodidx, int pathidx) {
  lua_pushnil(L);
  error_push(L, KIND_HTTP, NULL, methodidx, pathidx);
  error_seti(L, "status", x->status);
  if (x->retry_after > 0) error_seti(L, "retry_after", (lua_Integer)x->retry_after);
  add_body(L, x);
  if (x->location) error_sets(L, "location", x->location);
  message_describe(L, lua_gettop(L));
  return 2;
}

/* the final response's header block, as it came ("" when there was none) */
static const char *head_of(const xfer *x) { return x->hdr.p ? x->hdr.p : ""; }

/* [value, head] on the stack (json_decode_and) -> [value, nil, head] */
static void nil_between(lua_State *L) {
  lua_pushnil(L);
  lua_rotate(L, -2, 1);
}

/* result, nil, head (the status in *status) or nil, err: their number
** returned (3 or 2); closed: the request was closed before its result was
** built */
static int outcome(lua_State *L, const xfer *x, int closed, long *status, int methodidx, int pathidx) {
  if (x->aborted || closed)
    return error_fail(L, KIND_CLOSED, closed ? "request is closed" : x->aborted == ABORT_FORK ?
                      "request of the parent process: it ended here at fork()" :
                      "session closed during the request", methodidx, pathidx);
  if (x->code != CURLE_OK) return push_transfer_error(L, x, methodidx, pathidx);
  if (x->status < 200 || x->status >= 300) return push_http_error(L, x, methodidx, pathidx);
  if (x->body.n == 0 || x->head) {
    lua_newtable(L);
    lua_pushlstring(L, head_of(x), x->hdr.n);
  } else if (!json_decode_and(L, x->body.p, x->body.n, head_of(x), x->hdr.n)) {
    lua_pushfstring(L, "response is not JSON: %s", lua_tostring(L, -1));   /* why, msg */
    lua_remove(L, -2);
    lua_pushnil(L);
    error_push(L, KIND_JSON, lua_tostring(L, -2), methodidx, pathidx);  /* msg, nil, err */
    error_seti(L, "status", x->status);
    add_body(L, x);
    lua_remove(L, -3);
    return 2;
  }
  *status = x->status;
  nil_between(L);
  return 3;
}

static int push_outcome(lua_State *L, request *r, int methodidx, int pathidx) {
  r->bytes = r->x.body.n;
  return outcome(L, &r->x, r->closed, &r->status, methodidx, pathidx);
}

/* outcome() under lua_pcall: (x, &status, method, path) -> res, err [, head] */
static int outcome_p(lua_State *L) {
  return outcome(L, lua_touserdata(L, 1), 0, lua_touserdata(L, 2), 3, 4);
}

/* [res, nil, head] -> [res, nil, status, head, bytes]: a success's five
** values (integers: nothing here can raise) */
static int success(lua_State *L, long status, size_t bytes) {
  lua_pushinteger(L, status);
  lua_rotate(L, -2, 1);
  lua_pushinteger(L, (lua_Integer)bytes);
  return 5;
}

/*
** The outcome of the blocking exchange x that no request holds (a
** session's own, s:perform): result, nil, status, head, bytes or nil, err
** pushed, their number returned; x is closed by then. A raise while it is
** built (out of memory) must not leave x open, so nothing that can raise
** runs on x unprotected: the common answer (a 2xx JSON body) is decoded,
** and its header block pushed, under json_decode_and's own protection, x
** is closed, and only nil and integers are pushed after; every other
** outcome is built under lua_pcall. Returns -1 with the error on top when
** that raised (x closed): the caller raises it. A finaliser that closes
** the session while the result is built makes it kind "closed", as for a
** request.
*/
int request_outcome(lua_State *L, xfer *x, int methodidx, int pathidx) {
  long status = 0;
  size_t bytes = x->body.n;
  int top = lua_gettop(L), rc;
  if (!x->aborted && x->code == CURLE_OK && x->status >= 200 && x->status < 300 && x->body.n > 0 &&
      !x->head) {
    if (json_decode_and(L, x->body.p, x->body.n, head_of(x), x->hdr.n) && !x->aborted) {
      status = x->status;
      if (x->home) x->home->connects += x->nconnects;
      transfer_close(x);
      nil_between(L);
      return success(L, status, bytes);
    }
    lua_settop(L, top);
  }
  for (;;) {                                   /* twice when the session was closed meanwhile */
    int was = x->aborted;
    lua_settop(L, top);
    lua_pushcfunction(L, outcome_p);
    lua_pushlightuserdata(L, x);
    lua_pushlightuserdata(L, &status);
    lua_pushvalue(L, methodidx);
    lua_pushvalue(L, pathidx);
    status = 0;
    rc = lua_pcall(L, 4, LUA_MULTRET, 0);
    if (rc != LUA_OK || was || !x->aborted) break;
  }
  if (x->home) x->home->connects += x->nconnects;
  transfer_close(x);
  if (rc != LUA_OK) return -1;
  if (status == 0) return 2;
  return success(L, status, bytes);
}

/*
** The outcome of the finished request at ridx: result, nil, status, head,
** bytes or nil, err. Built once (user code can run while it is built, a
** finaliser closing the session among it: the exchange's buffers are its
** own, and a close during the call makes it report "closed"), then cached.
*/
int request_collect(lua_State *L, int ridx) {
  request *r = torequest(L, ridx);
  ridx = lua_absindex(L, ridx);
  if (!r->collected) {
    int top = lua_gettop(L);
    lua_getiuservalue(L, ridx, RUV_METHOD);                   /* top+1 */
    lua_getiuservalue(L, ridx, RUV_PATH);                     /* top+2 */
    if (!r->closed && !transfer_done(&r->x))
      return error_fail(L, KIND_BUSY, "request not finished: step() it until it returns true", top + 1, top + 2);
    push_outcome(L, r, top + 1, top + 2);                    /* res, err [, head] */
    if (r->x.aborted) {                                       /* closed while it was built */
      lua_settop(L, top + 2);
      r->status = 0;
      push_outcome(L, r, top + 1, top + 2);
    }
    if (r->x.home) r->x.home->connects += r->x.nconnects;
    if (r->status != 0) lua_setiuservalue(L, ridx, RUV_HEAD);
    lua_setiuservalue(L, ridx, RUV_ERROR);
    lua_setiuservalue(L, ridx, RUV_RESULT);
    lua_settop(L, top);
    r->collected = 1;
    transfer_close(&r->x);
  }
  lua_getiuservalue(L, ridx, RUV_RESULT);
  lua_getiuservalue(L, ridx, RUV_ERROR);
  if (r->status == 0) return 2;
  lua_pushinteger(L, r->status);
  lua_getiuservalue(L, ridx, RUV_HEAD);
  lua_pushinteger(L, (lua_Integer)r->bytes);
  return 5;
}

/* ------------------------------------------------------------ methods */

static int request_result(lua_State *L) {
  return request_collect(L, 1);
}

/*
** req:step() -> true when finished; else false, seconds until a new step is
** worth making. A loopback answer takes ~0.1 ms, a slow gateway seconds: the
** wait starts small and doubles up to 5 ms, for callers that can only sleep
** (a caller that can wait on :pollfd() needs no steps). A caller that steps
** again before the wait it was given (a tight loop) would starve the engine
** on a single CPU: give the CPU away then.
*/
static int request_step(lua_State *L) {
  request *r = torequest(L, 1);
  double t;
  if (r->closed || r->collected || transfer_done(&r->x)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  t = clock_now();
  if (t < r->wdue && r->x.lane != LANE_INLINE) sched_yield();
  lua_pushboolean(L, 0);
  lua_pushnumber(L, r->wnext);
  r->wdue = t + r->wnext;
  if (r->wnext < 0.005) r->wnext *= 2;
  return 2;
}

/* req:wait([timeout]) -> whether it ended; false early too when a signal
** handler asks Lua to stop meanwhile (lua5.4's SIGINT) */
static int request_wait(lua_State *L) {
  request *r = torequest(L, 1);
  double timeout = luaL_optnumber(L, 2, -1);
  sigmark mark;
  if (!(timeout <= 1e9)) timeout = -1;          /* huge or NaN: no limit */
  signal_mark(L, &mark);
  lua_pushboolean(L, r->closed || r->collected || transfer_wait(&r->x, timeout, signal_asked, &mark));
  return 1;
}

static int request_done(lua_State *L) {
  request *r = torequest(L, 1);
  lua_pushboolean(L, r->closed || r->collected || transfer_done(&r->x));
  return 1;
}

/* :pollfd() -- the descriptor to wait on before the next step: the
** completion descriptor (readable once the exchange has ended), or, for an
** exchange stepped in the session's lane, the socket it waits on; -1 when
** there is none (a blocking or collected request) */
static int request_pollfd(lua_State *L) {
  request *r = torequest(L, 1);
  const char *ev;
  lua_pushinteger(L, r->closed || r->collected ? -1 : transfer_pollfd(&r->x, &ev));
  return 1;
}

/* :events() -- what to wait for on :pollfd(): "r", "w" or "rw" */
static int request_events(lua_State *L) {
  request *r = torequest(L, 1);
  const char *ev = "r";
  if (!r->closed && !r->collected) transfer_pollfd(&r->x, &ev);
  lua_pushstring(L, ev);
  return 1;
}

/* :timeout() -- seconds after which a waiter should look again even without
** a wake-up (lib/transfer.c: transfer_timeout) */
static int request_timeout(lua_State *L) {
  request *r = torequest(L, 1);
  double left = 0;
  int inlane = r->x.lane == LANE_INLINE && r->x.state == X_RUNNING;   /* looked at, not stepped */
  if (!(r->closed || r->collected) && (inlane || !transfer_done(&r->x))) left = transfer_timeout(&r->x);
  lua_pushnumber(L, left);
  return 1;
}

static int request_close(lua_State *L) {
  request *r = torequest(L, 1);
  if (!r->collected) r->closed = 1;
  transfer_close(&r->x);
  return 0;
}

static int request_tostring(lua_State *L) {
  request *r = torequest(L, 1);
  int done = r->closed || r->collected || transfer_done(&r->x);
  lua_pushfstring(L, "ibkr.request (%s)", done ? "done" : "in flight");
  return 1;
}

static const luaL_Reg request_meth[] = {
  {"step", request_step},
  {"result", request_result},
  {"wait", request_wait},
  {"close", request_close},
  {"done", request_done},
  {"pollfd", request_pollfd},
  {"events", request_events},
  {"timeout", request_timeout},
  {NULL, NULL}
};

static const luaL_Reg request_metameth[] = {
  {"__index", NULL},
  {"__gc", request_close},
#if LUA_VERSION_NUM >= 504
  {"__close", request_close},
#endif
  {"__tostring", request_tostring},
  {NULL, NULL}
};

/* registers the class (the module is at the top of the stack) */
int request_open(lua_State *L) {
  ibkr_createmeta(L, REQUEST_MT, request_meth, request_metameth);
  return 0;
}
