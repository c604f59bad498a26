/*
** ibkr.h -- internal interface between the Lua-facing files of the
** ibkr.core module (the .c files of src/). The Lua-free engine below them
** has its own headers (src/lib/); only the records a request and a session embed
** come from there (lib/transfer.h). Only luaopen_ibkr_core (core.c) is
** exported from the shared object; every symbol declared here has hidden
** visibility, and carries the prefix of the file that defines it.
**
** Registration: each Lua-facing file has `int xxx_open(lua_State *L)`,
** which adds its functions and classes to the module table on the top of
** the stack; core.c lists them once (mods[]), as luasocket.c does.
**
** Who calls whom: each file's header says it (Called by, Calls), and
** docs/core.md draws the whole graph; spec/c_layout_spec.lua checks both
** against the compiled objects. Calls go one way: no file calls back into
** a file that calls it.
*/
#ifndef IBKR_H
#define IBKR_H

#include <limits.h>
#include <stddef.h>
#include "lua.h"
#include "lauxlib.h"

#include "lib/kind.h"
#include "lib/transfer.h"

#define IBKR_VERSION "0.1.0"

#define IBKR_API __attribute__((visibility("default")))

#define SESSION_MT "ibkr.session"
#define REQUEST_MT "ibkr.request"
#define ERROR_MT   "ibkr.error"
#define WEBSOCKET_MT "ibkr.websocket"

#define IBKR_BODY_CUT 4096          /* error objects keep this much of a body */
#define IBKR_MAX_DEPTH 256          /* JSON nesting accepted by the decoder and the encoder */
#define IBKR_MSG_MAX 512            /* bytes of an error message before it is cut */


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

/* v, given as a descriptor in argument arg: an integer 0..INT_MAX, or a raise (a larger one
** would be cut to another descriptor: 2^31 to 0) */
static inline int ibkr_checkfd(lua_State *L, int arg, lua_Integer v) {
  if (v < 0 || v > INT_MAX)
    luaL_argerror(L, arg, lua_pushfstring(L, "descriptor %I out of range (0 to %d)", (LUAI_UACINT)v, INT_MAX));
  return (int)v;
}

/* ------------------------------------------------------------ error.c */

int error_open(lua_State *L);
int error_push(lua_State *L, int kind, const char *message, int methodidx, int pathidx);
int error_fail(lua_State *L, int kind, const char *message, int methodidx, int pathidx);
void error_seti(lua_State *L, const char *k, lua_Integer v);
void error_sets(lua_State *L, const char *k, const char *v);
void error_sanitize(lua_State *L, int idx);
const char *error_push_printable(lua_State *L, const char *s, size_t len, size_t max);
void error_push_message(lua_State *L, const char *s, size_t n);

/* ------------------------------------------------------------ message.c */

void message_describe(lua_State *L, int idx);

/* ------------------------------------------------------------ json.c */

int json_open(lua_State *L);
int json_decode(lua_State *L, const char *s, size_t len);
int json_decode_and(lua_State *L, const char *s, size_t len, const char *tail, size_t tlen);
int json_encode(lua_State *L, int validx);
#define JSON_NUMTEXT 32             /* room for json_number_text's text and its NUL */
size_t json_number_text(lua_State *L, int idx, char *out);

/* ------------------------------------------------------------ wire.c */

int wire_open(lua_State *L);
int wire_base_url(lua_State *L, const char *url, char **host, long *port);
int wire_is_loopback(const char *host);
char *wire_redact(const char *url);
char *wire_url(const char *base, size_t baselen, const callspec *cs);
void wire_check_header(lua_State *L, const char *name, size_t nl, const char *val, size_t vl);
int wire_check_headers(lua_State *L, int t);
void wire_read_call(lua_State *L, int first, callspec *cs);
struct curl_slist *wire_header_list(char **uh, int nuh, int shape, const char **extra, int nextra);

/* ------------------------------------------------------------ request.c */

struct request;
int request_open(lua_State *L);
struct request *request_push(lua_State *L, int sessidx, int methodidx, int pathidx);
xfer *request_xfer(struct request *r);
int request_collect(lua_State *L, int ridx);
int request_outcome(lua_State *L, xfer *x, int methodidx, int pathidx);

/* ------------------------------------------------------------ the rest */

int session_open(lua_State *L);     /* session.c: core.new and the session class */
/* session.c: what a part that opens a connection of its own with the session's rules needs */
typedef struct sparts {
  const char *base;           /* the base URL, without a trailing '/' */
  char **uh;                  /* the session's headers, "Name: value" */
  int nuh;
  const char *ua;             /* the User-Agent its requests carry */
  long timeout_ms;
  CURL *tmpl;                 /* its handle template: TLS, proxy and loopback rules */
  struct curl_slist *resolve; /* its localhost pins */
} sparts;
int session_parts(lua_State *L, int idx, sparts *p);
int websocket_open(lua_State *L);   /* websocket.c: s:websocket and the websocket class */
int signal_open(lua_State *L);      /* signal.c: signal_catch, signal_caught, signal_wait */

/* signal.c: whether a signal handler asked the Lua state to stop during a
** wait in C (lua5.4's SIGINT handler sets a hook for that): taken before
** the wait by signal_mark, asked between its sleeps (a transfer_stopfn) */
typedef struct sigmark {
  lua_State *L, *main;
  lua_Hook hook, mhook;
  int mask, mmask;
} sigmark;
void signal_mark(lua_State *L, sigmark *m);
int signal_asked(void *m);
int oauth_open(lua_State *L);       /* oauth.c: core.oauth, OAuth 1.0a crypto on libcrypto */
int proc_open(lua_State *L);        /* proc.c: core.spawn, the ibkr.proc class */
void proc_reap_pending(void);       /* proc.c: reaps released children that ended since */

#endif
