/*
** websocket.c -- the websocket class (ibkr.websocket): s:websocket(path
** [, opts]) opens one connection to the session's gateway (src/lib/wsconn.c
** does the protocol, without Lua), stepped without blocking and waited on
** like a request (:pollfd(), :events(), :timeout(): cqueues' pollable
** convention). Messages come out decoded by the module's JSON rules
** (json.c). The policy (when to connect, greetings, heartbeats,
** reconnects) is the Lua layer's: lua/ibkr/stream.lua.
** Adds to the module: s:websocket (a method of the session class, which is
** registered before: core.c's mods[]), the "ibkr.websocket" class.
** Called by: core.c.
** Calls: session.c, wire.c, json.c, error.c, message.c, lib/wsconn.c, lib/buf.c.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ibkr.h"
#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/wsconn.h"

typedef struct websocket {
  wsconn c;
  wsmsg *reading;             /* the message ws:read is decoding (freed with the websocket on a raise) */
} websocket;

/* user values: the path (for errors: "GET /ws") */
enum { WUV_PATH = 1, WUV_COUNT = WUV_PATH };

static const char *const state_names[] = { "connecting", "upgrading", "open", "closed" };

static websocket *tows(lua_State *L) {
  return (websocket *)luaL_checkudata(L, 1, WEBSOCKET_MT);
}

/* ------------------------------------------------------------ s:websocket */

/* opts at 3 (or nil): max_message is this file's; query, headers and
** timeout go on to the request rules (wire.c), in a copy at 3 */
static size_t read_opts(lua_State *L) {
  lua_Integer max = WS_MAX_MESSAGE;
  if (lua_isnil(L, 3)) return (size_t)max;
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_newtable(L);                                           /* 4: the copy */
  lua_pushnil(L);
  while (lua_next(L, 3)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    if (strcmp(k, "max_message") == 0) {
      int isint;
      max = lua_tointegerx(L, -1, &isint);
      if (!isint || max < 1 || (uint64_t)max > ((uint64_t)1 << 31))
        luaL_error(L, "websocket option 'max_message' must be an integer from 1 to 2^31");
    } else if (strcmp(k, "query") == 0 || strcmp(k, "headers") == 0 || strcmp(k, "timeout") == 0) {
      lua_pushvalue(L, -2);
      lua_pushvalue(L, -2);
      lua_rawset(L, 4);
    } else {
      luaL_error(L, "unknown websocket option '%s'", k);
    }
    lua_pop(L, 1);
  }
  lua_replace(L, 3);
  return (size_t)max;
}

static int add(ibuf *b, const char *s) {
  return buf_add(b, s, strlen(s));
}

/* "GET <base path><path>[?query] HTTP/1.1", Host, the session's and the
** call's headers (wire.c's merge: the call's win), a User-Agent; each line
** ends in CRLF, NUL-terminated. 0 when out of memory or base is odd. */
static int build_head(ibuf *b, const sparts *c, const callspec *cs) {
  CURLU *u = curl_url();
  char *host = NULL, *port = NULL, *bpath = NULL;
  struct curl_slist *hl = NULL;
  int ok = u && curl_url_set(u, CURLUPART_URL, c->base, CURLU_PATH_AS_IS) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
           curl_url_get(u, CURLUPART_PATH, &bpath, 0) == CURLUE_OK;
  int ua = 0;
  if (ok && curl_url_get(u, CURLUPART_PORT, &port, 0) != CURLUE_OK) port = NULL;
  ok = ok && add(b, "GET ") && (strcmp(bpath, "/") == 0 || add(b, bpath)) &&
       buf_add(b, cs->path, cs->plen);
  if (ok && cs->qlen)
    ok = add(b, memchr(cs->path, '?', cs->plen) ? "&" : "?") && buf_add(b, cs->query, cs->qlen);
  ok = ok && add(b, " HTTP/1.1\r\nHost: ") && add(b, host) && (!port || (add(b, ":") && add(b, port))) &&
       add(b, "\r\n") && (hl = wire_header_list(c->uh, c->nuh, HL_NOBODY, cs->hv, cs->nh)) != NULL;
  for (struct curl_slist *l = hl; ok && l; l = l->next) {
    size_t n = strlen(l->data);
    ua |= strncasecmp(l->data, "User-Agent", 10) == 0 && (l->data[10] == ':' || l->data[10] == ';');
    if (n && l->data[n - 1] == ';' && !strchr(l->data, ':'))   /* libcurl's spelling of an empty value */
      ok = buf_add(b, l->data, n - 1) && add(b, ":\r\n");
    else
      ok = add(b, l->data) && add(b, "\r\n");
  }
  if (ok && !ua) ok = add(b, "User-Agent: ") && add(b, c->ua) && add(b, "\r\n");
  ok = ok && buf_add(b, "", 1);
  curl_slist_free_all(hl);
  curl_free(host);
  curl_free(port);
  curl_free(bpath);
  curl_url_cleanup(u);
  return ok;
}

/*
** s:websocket(path [, opts]) -> websocket, or nil, err (kind "closed": the
** session is closed or was opened before fork()). path as for s:start (the
** same rules: wire.c); opts: query, headers, timeout (seconds for the
** connect and TLS handshake; the session's timeout by default),
** max_message (bytes; default 1 MiB). Raises on programmer errors. The
** connect starts at once on the engine thread.
*/
static int websocket_new(lua_State *L) {
  callspec cs;
  sparts sp;
  websocket *ws;
  size_t max;
  ibuf head = { NULL, 0, 0 };
  CURL *e;
  long ms;
  luaL_checkudata(L, 1, SESSION_MT);
  lua_settop(L, 3);
  max = read_opts(L);
  lua_pushliteral(L, "GET");
  lua_insert(L, 2);                                            /* 1 s, 2 "GET", 3 path, 4 opts */
  wire_read_call(L, 2, &cs);
  ws = lua_newuserdatauv(L, sizeof *ws, WUV_COUNT);
  ws->reading = NULL;
  wsconn_init(&ws->c);
  luaL_setmetatable(L, WEBSOCKET_MT);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, -2, WUV_PATH);
  if (!session_parts(L, 1, &sp)) return 2;                     /* (user code may have run: a finaliser) */
  ms = cs.timeout > 0 ? (long)ceil(fmin(cs.timeout * 1000, 1e12)) : sp.timeout_ms;
  if (!build_head(&head, &sp, &cs) || (e = curl_easy_duphandle(sp.tmpl)) == NULL) {
    buf_free(&head);
    return luaL_error(L, "out of memory");
  }
  wsconn_start(&ws->c, e, &(wsopts){ .url = sp.base, .head = head.p, .resolve = sp.resolve, .max_message = max,
                                      .body_cut = IBKR_BODY_CUT, .timeout_ms = ms });
  buf_free(&head);
  return 1;
}

/* ------------------------------------------------------------ methods */

/* ws:step() -> more: does what can be done now (never waits); more: step
** again at once (bytes or messages wait), else wait on the pollable */
static int ws_step(lua_State *L) {
  lua_pushboolean(L, wsconn_step(&tows(L)->c));
  return 1;
}

/* ws:read() -> the oldest message received, decoded (a JSON object or
** array as a table; any other text as { text = "..." }, binary frames as
** { binary = "..." }), or nil. The message leaves the inbox only once its
** value is built (a raise, out of memory, leaves it there). */
static int ws_read(lua_State *L) {
  websocket *ws = tows(L);
  wsmsg *m = wsconn_pop(&ws->c);
  if (m == NULL) return 0;
  free(ws->reading);                            /* (one a raise left behind) */
  ws->reading = m;                              /* a finaliser that closes ws meanwhile frees not m */
  if (!json_decode(L, m->data, m->len) || !lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushlstring(L, m->data, m->len);
    lua_setfield(L, -2, m->binary ? "binary" : "text");
  }
  ws->reading = NULL;
  free(m);
  return 1;
}

/* ws:pending() -> bytes of the oldest message received and not yet read,
** or nil: what the next ws:read() decodes (a caller bounding its resumes
** reads a large one first in a resume) */
static int ws_pending(lua_State *L) {
  const wsmsg *m = wsconn_peek(&tows(L)->c);
  if (m == NULL) return 0;
  lua_pushinteger(L, (lua_Integer)m->len);
  return 1;
}

/* ws:send(text [, binary]) -> true, or nil, err (kind "closed": not open) */
static int ws_send(lua_State *L) {
  websocket *ws = tows(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (!wsconn_send(&ws->c, s, n, lua_toboolean(L, 3))) {
    lua_pushliteral(L, "GET");
    lua_getiuservalue(L, 1, WUV_PATH);
    return error_fail(L, KIND_CLOSED, ws->c.state == WS_OPEN ? "out of memory" : "the websocket is not open",
                     lua_gettop(L) - 1, lua_gettop(L));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ws:close([code]) -- a close frame (code, default 1000) if it is open and
** the socket takes it now, then everything goes; idempotent */
static int ws_close(lua_State *L) {
  websocket *ws = tows(L);
  lua_Integer code = luaL_optinteger(L, 2, 1000);
  if (code < 1000 || code > 4999) return luaL_argerror(L, 2, "a close code from 1000 to 4999");
  wsconn_close(&ws->c, (int)code);
  wsconn_free(&ws->c);
  free(ws->reading);
  ws->reading = NULL;
  return 0;
}

/* __gc, __close: a websocket dropped (a stream's coroutine closed, or
** collected) goes with a close frame 1001, going away, when the socket
** takes it */
static int ws_gc(lua_State *L) {
  websocket *ws = tows(L);
  wsconn_close(&ws->c, 1001);
  wsconn_free(&ws->c);
  free(ws->reading);
  ws->reading = NULL;
  return 0;
}

/* the error object of a closed websocket: kind, message, and what came
** with it (status, body, data, close_code) */
static void push_reason(lua_State *L, websocket *ws) {
  wsconn *c = &ws->c;
  int top = lua_gettop(L);
  lua_pushliteral(L, "GET");
  lua_getiuservalue(L, 1, WUV_PATH);
  error_push(L, c->kind, c->why, top + 1, top + 2);
  if (c->status) {
    error_seti(L, "status", c->status);
    if (c->bodylen) {
      lua_pushlstring(L, c->body, c->bodylen);
      lua_setfield(L, -2, "body");
      if (json_decode(L, c->body, c->bodylen)) lua_setfield(L, -2, "data");
      else lua_pop(L, 1);
    }
    message_describe(L, lua_gettop(L));         /* "HTTP 401: what the body said" */
    lua_pushfstring(L, "%s (", c->why);
    lua_getfield(L, -2, "message");
    lua_pushliteral(L, ")");
    lua_concat(L, 3);
    lua_setfield(L, -2, "message");
  }
  if (c->close_code) error_seti(L, "close_code", c->close_code);
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
}

/* ws:state() -> "connecting" | "upgrading" | "open" | "closed" [, err]:
** err says why it closed (not for a close by ws:close()) */
static int ws_state(lua_State *L) {
  websocket *ws = tows(L);
  lua_pushstring(L, state_names[ws->c.state]);
  if (ws->c.state != WS_CLOSED || ws->c.kind < 0) return 1;
  push_reason(L, ws);
  return 2;
}

static int ws_pollfd(lua_State *L) {
  const char *ev;
  lua_pushinteger(L, wsconn_pollfd(&tows(L)->c, &ev));
  return 1;
}

static int ws_events(lua_State *L) {
  const char *ev;
  wsconn_pollfd(&tows(L)->c, &ev);
  lua_pushstring(L, ev);
  return 1;
}

/* seconds after which to step even without a wake-up, or nil: none */
static int ws_timeout(lua_State *L) {
  double t = wsconn_timeout(&tows(L)->c);
  if (t < 0) return 0;
  lua_pushnumber(L, t);
  return 1;
}

/* ws:info() -> { received =, sent = (bytes), messages =, sent_messages =,
**   idle = seconds since bytes last arrived (once open), queued = bytes
**   received and not yet read } */
static int ws_info(lua_State *L) {
  wsconn *c = &tows(L)->c;
  const struct { const char *k; long long v; } counts[] = {
    {"received", c->rx_bytes}, {"sent", c->tx_bytes}, {"messages", c->rx_msgs},
    {"sent_messages", c->tx_msgs}, {"queued", (long long)c->inbox},
  };
  lua_createtable(L, 0, 6);
  for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
    lua_pushinteger(L, (lua_Integer)counts[i].v);
    lua_setfield(L, -2, counts[i].k);
  }
  if (c->last_rx > 0) {
    lua_pushnumber(L, clock_now() - c->last_rx);
    lua_setfield(L, -2, "idle");
  }
  return 1;
}

/* ws:received() -> bytes received so far (a cheap "heard anything?") */
static int ws_received(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)tows(L)->c.rx_bytes);
  return 1;
}

static int ws_tostring(lua_State *L) {
  websocket *ws = tows(L);
  lua_getiuservalue(L, 1, WUV_PATH);
  lua_pushfstring(L, "ibkr.websocket (%s, %s)", state_names[ws->c.state], lua_tostring(L, -1));
  return 1;
}

static const luaL_Reg ws_meth[] = {
  {"step", ws_step},
  {"read", ws_read},
  {"pending", ws_pending},
  {"send", ws_send},
  {"close", ws_close},
  {"state", ws_state},
  {"pollfd", ws_pollfd},
  {"events", ws_events},
  {"timeout", ws_timeout},
  {"info", ws_info},
  {"received", ws_received},
  {NULL, NULL}
};

static const luaL_Reg ws_metameth[] = {
  {"__index", NULL},
  {"__gc", ws_gc},
#if LUA_VERSION_NUM >= 504
  {"__close", ws_gc},
#endif
  {"__tostring", ws_tostring},
  {NULL, NULL}
};

/* registers the class, and s:websocket as a method of the session class
** (registered before: core.c's mods[]), so session.c needs nothing of this
** file */
int websocket_open(lua_State *L) {
  ibkr_createmeta(L, WEBSOCKET_MT, ws_meth, ws_metameth);
  luaL_getmetatable(L, SESSION_MT);
  lua_getfield(L, -1, "__index");
  lua_pushcfunction(L, websocket_new);
  lua_setfield(L, -2, "websocket");
  lua_pop(L, 2);
  return 0;
}
