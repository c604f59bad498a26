/*
** kind.h -- the kinds of error the core itself reports, one list (core.kinds;
** the table in docs/core.md and the Lua layer's registry, ibkr/kinds.lua,
** are checked against it), and what a libcurl code means among them
** (src/lib/kind.c): the REST exchanges' outcomes (request.c) and the
** websocket's (wsconn.c) are named by the same rule. The Lua layer adds
** kinds of its own on top. Lua-free.
*/
#ifndef IBKR_LIB_KIND_H
#define IBKR_LIB_KIND_H

#include <curl/curl.h>

#define IBKR_KINDS(X) \
  X(CONNECT, "connect")       /* no connection: refused, unreachable, DNS, proxy */ \
  X(TIMEOUT, "timeout")       /* the exchange's time budget ran out */ \
  X(TLS, "tls")               /* handshake or certificate */ \
  X(TOO_LARGE, "too_large")   /* the answer (a websocket message) is larger than the bound */ \
  X(PROTOCOL, "protocol")     /* anything else below HTTP: reset, cut off, garbage, RFC 6455 broken */ \
  X(HTTP, "http")             /* an answer that is not a 2xx (a websocket upgrade: not a 101) */ \
  X(JSON, "json")             /* a 2xx whose body is not JSON; core.decode */ \
  X(CLOSED, "closed")         /* the session, the request or the websocket was closed here (or forked) */ \
  X(HANGUP, "hangup")         /* the gateway ended a websocket: its close frame, or the end of the stream */ \
  X(BUSY, "busy")             /* req:result() before the end */

enum {
#define IBKR_KIND_ENUM(id, name) KIND_##id,
  IBKR_KINDS(IBKR_KIND_ENUM)
#undef IBKR_KIND_ENUM
  KIND_COUNT
};

int kind_of_code(CURLcode c, int overflow);

#endif
