/*
** buf.h -- byte buffers owned by C (src/lib/buf.c). libcurl's callbacks
** fill them while no Lua code may run, so they are never luaL_Buffers.
** Lua-free, like everything in src/lib/.
*/
#ifndef IBKR_LIB_BUF_H
#define IBKR_LIB_BUF_H

#include <stddef.h>

typedef struct ibuf {
  char *p;                    /* malloc'd, NUL-terminated after buf_add; NULL when empty */
  size_t n, cap;
} ibuf;

int buf_reserve(ibuf *b, size_t need);
int buf_add(ibuf *b, const char *s, size_t len);
void buf_free(ibuf *b);
char *buf_strndup(const char *s, size_t n);

#endif
