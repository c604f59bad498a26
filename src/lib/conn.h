/*
** conn.h -- the sockets libcurl opens (src/lib/conn.c): registered, checked
** for stale input before a request goes out on a reused connection, and
** refused to an exchange that may not connect. Lua-free.
*/
#ifndef IBKR_LIB_CONN_H
#define IBKR_LIB_CONN_H

#include <curl/curl.h>

/* What one exchange allows of the sockets libcurl opens for it
** (CURLOPT_OPENSOCKETDATA): `refuse` set, an open fails and `refused` says
** so (an exchange of the warm lane never connects on the Lua thread). */
typedef struct connwatch {
  int refuse, refused;
} connwatch;

int conn_watch(CURL *e);
void conn_forked(void);
void conn_replace(int fd, int by);

#endif
