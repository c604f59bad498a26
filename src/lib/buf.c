/*
** buf.c -- byte buffers owned by C (buf.h). libcurl's callbacks fill them
** while no Lua code may run, so they are never luaL_Buffers.
** Called by: session.c, json.c, wire.c, websocket.c, lib/transfer.c, lib/handle.c, lib/wsconn.c.
** Calls: nothing of ours.
** Lua-free, like every file in src/lib/.
*/
#include <stdlib.h>
#include <string.h>

#include "buf.h"

/* room for need bytes; 0 when out of memory (the buffer is unchanged) */
int buf_reserve(ibuf *b, size_t need) {
  size_t cap;
  char *p;
  if (need <= b->cap) return 1;
  cap = b->cap ? b->cap : 1024;
  while (cap < need) cap *= 2;
  p = realloc(b->p, cap);
  if (p == NULL) return 0;
  b->p = p;
  b->cap = cap;
  return 1;
}

/* appends s[0..len) and keeps a NUL after it; 0 when out of memory */
int buf_add(ibuf *b, const char *s, size_t len) {
  if (!buf_reserve(b, b->n + len + 1)) return 0;
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = '\0';
  return 1;
}

void buf_free(ibuf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

/* a NUL-terminated copy of n bytes, or NULL when out of memory */
char *buf_strndup(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}
