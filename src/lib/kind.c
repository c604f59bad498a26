/*
** kind.c -- what a libcurl code means, as the kind of error the core reports
** (kind.h): one rule for every transfer, the REST exchanges (request.c) and
** the websocket's connect (wsconn.c).
** Called by: request.c, lib/wsconn.c.
** Calls: nothing of ours.
** Lua-free, like every file in src/lib/.
*/
#include "kind.h"

/* KIND_* of a transfer that failed below HTTP with code c; `overflow`: the
** write callback refused the body for being larger than its bound */
int kind_of_code(CURLcode c, int overflow) {
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
