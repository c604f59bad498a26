/*
** text.c -- the text rules of the module, one copy each: the length of a
** well-formed UTF-8 sequence (json.c's encoder, message.c), a text made one
** printable, bounded line (every error message: error.c pushes it; the
** encoder's errors), and URL userinfo removed from a text (messages,
** wire.c's base URL shown). It writes into the caller's memory.
** Called by: error.c, message.c, json.c, wire.c.
** Calls: nothing of ours.
** Lua-free, like every file in src/lib/.
*/
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "text.h"

/*
** Length (1..4) of the well-formed UTF-8 sequence at s (RFC 3629: no
** overlong forms, no surrogates, nothing above U+10FFFF), or 0 if the bytes
** there are not one. *cp receives the code point.
*/
size_t text_utf8_len(const char *s, size_t avail, unsigned *cp) {
  const unsigned char *p = (const unsigned char *)s;
  unsigned c = p[0], lo = 0x80, hi = 0xBF;
  size_t n;
  if (c < 0x80) { *cp = c; return 1; }
  if (c >= 0xC2 && c <= 0xDF) { n = 2; c &= 0x1F; }
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; c &= 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; c &= 0x07;
  } else return 0;
  if (avail < n || p[1] < lo || p[1] > hi) return 0;
  c = (c << 6) | (p[1] & 0x3F);
  for (size_t i = 2; i < n; i++) {
    if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    c = (c << 6) | (p[i] & 0x3F);
  }
  *cp = c;
  return n;
}

/* code points a terminal must not get raw: C1 controls (NEL, CSI...), line
** and paragraph separators, bidirectional overrides and isolates, BOM */
static int term_unsafe(unsigned cp) {
  return (cp >= 0x80 && cp <= 0x9F) || cp == 0x061C || cp == 0x200E || cp == 0x200F ||
         (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0xFEFF;
}

/*
** One character of a text that is not plain ASCII, at s: writes what a
** printable line shows for it into out (at most 15 bytes) and returns that
** length; *step is how many input bytes it stood for. An escape is at most
** four times as long as the bytes it stands for.
*/
static size_t printable_char(const char *s, size_t avail, char *out, size_t *step) {
  unsigned char c = (unsigned char)s[0];
  unsigned cp;
  *step = 1;
  if (c == '\r' || c == '\n' || c == '\t')
    return (size_t)snprintf(out, 16, "\\%c", c == '\r' ? 'r' : c == '\n' ? 'n' : 't');
  if (c < 0x80 || (*step = text_utf8_len(s, avail, &cp)) == 0) {
    *step = 1;                                    /* C0, DEL, or a byte that is not UTF-8 */
    return (size_t)snprintf(out, 16, "\\x%02X", c);
  }
  if (term_unsafe(cp)) return (size_t)snprintf(out, 16, "\\u{%04X}", cp);
  memcpy(out, s, *step);
  return *step;
}

/* bytes text_printable may write for len bytes of input cut at max: never
** more than max, nor four times the input, plus the ellipsis and a NUL */
size_t text_printable_room(size_t len, size_t max) {
  return (len <= max / 4 ? 4 * len : max) + sizeof TEXT_ELLIPSIS;
}

/*
** The text s[0..len) made one printable line of at most max bytes (plus
** the 3-byte ellipsis when cut), written to out (text_printable_room bytes;
** not NUL-terminated): CR, LF and TAB become \r \n \t, other C0 controls,
** DEL and bytes that are not UTF-8 become \xNN, unsafe code points
** \u{XXXX}. A backslash stays as it is. Never cuts inside an escape or a
** character. Returns the length written.
*/
size_t text_printable(const char *s, size_t len, size_t max, char *out) {
  size_t i = 0, o = 0;
  while (i < len) {
    char esc[16];
    const char *piece = s + i;
    size_t pn = 0, step = 0;
    while (i + step < len && (unsigned char)s[i + step] >= 0x20 && (unsigned char)s[i + step] < 0x7F)
      step++;                                     /* a run of plain ASCII, copied as it is */
    if (step > 0) pn = step = step < max - o ? step : max - o;
    else {
      pn = printable_char(s + i, len - i, esc, &step);
      piece = esc;
      if (o + pn > max) pn = 0;
    }
    if (pn == 0) {                                /* no room left */
      memcpy(out + o, TEXT_ELLIPSIS, sizeof TEXT_ELLIPSIS - 1);
      return o + sizeof TEXT_ELLIPSIS - 1;
    }
    memcpy(out + o, piece, pn);
    o += pn;
    i += step;
  }
  return o;
}

/* the end of the authority of a URL whose "//" ends at auth: the next '/',
** '<', '>', control byte or end, and a quote or whitespace -- unless the URL
** is quoted (libcurl writes 'http://...'): then only its closing quote */
static const char *authority_end(const char *s, const char *auth, const char *end) {
  const char *b = auth - 3;
  char quote = 0;
  while (b > s && (isalnum((unsigned char)b[-1]) || b[-1] == '+' || b[-1] == '-' || b[-1] == '.')) b--;
  if (b > s && (b[-1] == '\'' || b[-1] == '"')) quote = b[-1];
  for (; auth < end; auth++) {
    unsigned char c = (unsigned char)*auth;
    if (c == '/' || c < ' ' || c == 0x7f || c == '<' || c == '>') break;
    if (quote ? c == (unsigned char)quote : (c == ' ' || c == '"' || c == '\'')) break;
  }
  return auth;
}

/*
** s[0..n) without the userinfo of the URLs in it ("https://u:p@host/"
** becomes "https://host/"), written NUL-terminated to out; returns its
** length; out has room for n + 1 bytes: libcurl resolves a relative Location
** against the request URL, base_url credentials included, and a caller or
** libcurl may quote a URL in a message. After each "://" everything up to
** the LAST '@' before the next '/', whitespace, quote, '<', '>', control
** character or end goes (in a quoted URL, as libcurl quotes one, only the
** closing quote, not whitespace, ends it): a password may hold '#', '?',
** ':' -- "Unsupported proxy syntax in 'http://bob:pr0xy#secret@host'" --
** so those do not end the userinfo here. The one copy of this rule.
*/
size_t text_strip_userinfo(const char *s, size_t n, char *out) {
  char *o = out;
  const char *p = s, *end = s + n;
  for (const char *q = s; q + 3 <= end; q++) {
    const char *auth, *at = NULL, *stop;
    if (q[0] != ':' || q[1] != '/' || q[2] != '/') continue;
    auth = q + 3;
    stop = authority_end(s, auth, end);
    for (const char *a = auth; a < stop; a++)
      if (*a == '@') at = a;
    if (at == NULL) continue;
    memcpy(o, p, (size_t)(auth - p));
    o += auth - p;
    p = at + 1;
    q = at;
  }
  memcpy(o, p, (size_t)(end - p));
  o += end - p;
  *o = '\0';
  return (size_t)(o - out);
}
