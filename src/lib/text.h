/*
** text.h -- text rules shared by the module (src/lib/text.c): UTF-8
** sequences, one printable bounded line, URL userinfo removed. Lua-free:
** error.c pushes what these write.
*/
#ifndef IBKR_LIB_TEXT_H
#define IBKR_LIB_TEXT_H

#include <stddef.h>

#define TEXT_ELLIPSIS "\xE2\x80\xA6"          /* U+2026, appended where a text was cut */

size_t text_utf8_len(const char *s, size_t avail, unsigned *cp);
size_t text_printable_room(size_t len, size_t max);
size_t text_printable(const char *s, size_t len, size_t max, char *out);
size_t text_strip_userinfo(const char *s, size_t n, char *out);

#endif
