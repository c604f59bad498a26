/*
** buf.c -- byte buffers owned by C. libcurl's callbacks fill them while no
** Lua code may run, so they are never luaL_Buffers.
*/
#include <stdlib.h>
#include <string.h>

#include "ibkr.h"

int ibuf_reserve(ibuf *b, size_t need) {
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

int ibuf_add(ibuf *b, const char *s, size_t len) {
  if (!ibuf_reserve(b, b->n + len + 1)) return 0;
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = '\0';
  return 1;
}

void ibuf_free(ibuf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

/* a NUL-terminated copy of n bytes, or NULL when out of memory */
char *ibkr_strndup(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}
