/*
** ibkr.h -- internal interface between the files of the ibkr.core module.
** Only luaopen_ibkr_core (core.c) is exported from the shared object; every
** symbol declared here has hidden visibility.
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

/* shared upvalue of every module function and method: a private cjson's encode */
#define UV_ENCODE 1
#define NUPVALUES 1

#define IBKR_BODY_CUT 4096          /* error objects keep this much of a body */
#define IBKR_MAX_DEPTH 256          /* JSON nesting accepted by the decoder */

/* growable byte buffer owned by C (never a luaL_Buffer: curl callbacks fill it) */
typedef struct ibuf {
  char *p;
  size_t n, cap;
} ibuf;

int ibuf_reserve(ibuf *b, size_t need);
int ibuf_add(ibuf *b, const char *s, size_t len);
void ibuf_free(ibuf *b);

struct request;

/* The three prebuilt header lists, one per request shape. */
enum { HL_NOBODY, HL_POST0, HL_JSON, HL_COUNT };

typedef struct session {
  CURL *easy;
  CURLM *multi;
  struct curl_slist *hl[HL_COUNT];
  char **uh;                  /* user headers, "Name: value", malloc'd */
  int nuh;
  char *base;                 /* base URL without trailing '/' */
  size_t baselen;
  ibuf url;                   /* URL of the current exchange */
  ibuf lasturl;               /* the URL libcurl has now (options persist) */
  char lastreq[20];           /* method + shape libcurl is set for; "" = unknown */
  ibuf body;                  /* response body of the current exchange */
  size_t max_body;
  int overflow;               /* the write callback refused data (> max_body) */
  int closed;
  /* the exchange in progress (at most one) */
  int inuse;                  /* an exchange was begun and not yet collected */
  int active;                 /* the easy handle is attached to the multi */
  int finished;
  CURLcode code;
  struct curl_slist *callh;   /* per-call header list, or NULL */
  int head;                   /* the exchange is a HEAD request */
  struct request *owner;      /* non-blocking owner of the exchange, or NULL */
  /* a worker thread runs the transfer of a non-blocking request (see request.c) */
  pthread_t worker;
  int threaded;               /* the worker exists and has not been joined */
  int wdone, wabort;          /* guarded by mu */
  double wnext;               /* the wait step() suggests next: grows from 0.2 ms to 5 ms */
  double wdue;                /* when the caller was told to step again */
  int sync_init;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  char errbuf[CURL_ERROR_SIZE];
  lua_Integer connects, exchanges;
} session;

typedef struct request {
  session *s;                 /* NULL once detached (closed or session closed) */
  int done;                   /* transfer finished (or aborted) */
  int collected;              /* result() already built and cached */
  int aborted;                /* the session was closed under us */
  long status;
} request;

/* request.c: the HTTP exchange */
int xfer_setup(session *s, char *err, size_t errlen);
void xfer_begin(lua_State *L, session *s, const char *method, int pathidx, int optsidx);
int xfer_sync_init(session *s);
void xfer_sync_free(session *s);
int xfer_spawn(session *s);
int xfer_step(session *s, double *wait);
int xfer_wait(session *s, double timeout);
void xfer_finish(session *s);
void xfer_release(session *s);
int xfer_push_result(lua_State *L, session *s, int methodidx, int pathidx);
int ibkr_check_headers(lua_State *L, int t);

/* core.c: one header name/value pair; raises on a programmer error */
void ibkr_check_header(lua_State *L, const char *name, size_t nl, const char *val, size_t vl);
void xfer_build_headers(lua_State *L, session *s);

/* decode.c: JSON text -> Lua value, with the module's number and null rules */
int ibkr_decode(lua_State *L, const char *s, size_t len);
int ibkr_encode(lua_State *L, int encodeidx, int validx);

/* error.c: error objects */
void ibkr_error_register(lua_State *L);
int ibkr_push_error(lua_State *L, const char *kind, const char *message,
                    int methodidx, int pathidx);
void ibkr_seti(lua_State *L, const char *k, lua_Integer v);
void ibkr_sets(lua_State *L, const char *k, const char *v);
int ibkr_fail(lua_State *L, const char *kind, const char *message, int methodidx, int pathidx);

/* oauth.c: OAuth 1.0a crypto on libcrypto; sets M.oauth on the module table at the top */
void ibkr_oauth_open(lua_State *L);

#endif
