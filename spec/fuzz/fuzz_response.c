/*
** fuzz_response.c -- libFuzzer target over the response handling of ibkr.core.
**
** The C sources of the module are compiled into this file (a unity build), so
** the static pieces (the write callback, the decoder's normalisation, the
** header and URL checks) are reached directly and sanitizer reports point at
** src/. lua5.4 is linked in; lua-cjson is Debian's (require "cjson").
**
** Input: byte 0 picks the mode, byte 1 is a parameter, the rest is data.
**   mode 0  decode: core.decode(data), then check the normalisation rules on
**           the result (no integral float below 2^53, no null under a string
**           key, depth bounded)
**   mode 1  body accumulation: feed data to the write callback in chunks of
**           (param % 61) + 1 bytes under a max_body of 1..4096 (or 8 MiB);
**           the buffer must hold exactly the accepted prefix, never more than
**           max_body, and `overflow` must be set iff the data did not fit
**   mode 2  a whole HTTP response: data is what the "server" sends (status
**           line, headers -- Retry-After, Content-Type, Content-Encoding,
**           Transfer-Encoding, Location -- and body) from a unix-socket server
**           thread that libcurl reaches as its connection; s:perform (param even)
**           or start/step/result (param odd) must return a documented shape
**   mode 4  several responses on one kept-alive connection: data split at 0xFE bytes into up to
**           4 responses, each sent after the server read one request head on the same
**           connection; one session makes as many calls (perform or start/step, with a per-call
**           timeout of 0.5 s), each must return a documented shape
**   mode 3  request building: data split at 0xFF bytes into path, header
**           name, header value, query key, query value; s:start must either
**           raise a programmer error or build a URL and header lines without
**           CR, LF, NUL, space or control characters
*/
#define _GNU_SOURCE                  /* dladdr, in lib/engine.c */
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "lualib.h"

#include "../../src/lib/buf.c"
#include "../../src/lib/text.c"
#include "../../src/lib/conn.c"
#include "../../src/lib/handle.c"
#include "../../src/lib/lane.c"
#include "../../src/lib/engine.c"
#include "../../src/lib/transfer.c"
#include "../../src/error.c"
#include "../../src/message.c"
#include "../../src/json.c"
#include "../../src/wire.c"
#include "../../src/request.c"
#include "../../src/session.c"
#include "../../src/signal.c"
#include "../../src/oauth.c"  /* [oauth] core.c registers it */
#include "../../src/core.c"
#include "../../src/proc.c"   /* core.spawn: core.c registers it */

static lua_State *L;

#define FAIL(...) do { fprintf(stderr, "fuzz invariant: " __VA_ARGS__); fputc('\n', stderr); abort(); } while (0)

/* ------------------------------------------------ mode 2: the "server" */

/*
** A thread serves one canned response per connection on a unix socket:
** accept, send the current payload, shut the write side, read the request
** until the client closes. libcurl reaches it through CURLOPT_UNIX_SOCKET_PATH,
** so everything from the status line on is libcurl's and our real code.
*/
static char sock_path[108];
static pthread_mutex_t pay_mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *pay;
static size_t pay_n;
static int pay_keep;                   /* mode 4: parts served one per request head */
static size_t part_off[5];             /* mode 4: part i is pay[part_off[i] .. part_off[i+1]-1] */
static int nparts, next_part;

/* read one request head (up to the blank line); 0 when the client closed */
static int read_head(int c) {
  uint32_t last = 0;
  char ch;
  while (recv(c, &ch, 1, 0) == 1) {
    last = (last << 8) | (uint8_t)ch;
    if (last == 0x0D0A0D0Au) return 1;
  }
  return 0;
}

static void send_all(int c, const uint8_t *p, size_t n) {
  for (size_t off = 0; off < n;) {
    ssize_t w = send(c, p + off, n - off, MSG_NOSIGNAL);
    if (w <= 0) break;
    off += (size_t)w;
  }
}

/* mode 4 on connection c: a part per request head while parts are left */
static void serve_keep(int c) {
  static uint8_t out[1 << 17];
  for (;;) {
    size_t n = 0;
    int more;
    if (!read_head(c)) return;
    pthread_mutex_lock(&pay_mu);
    more = next_part < nparts;
    if (more) {
      n = part_off[next_part + 1] - 1 - part_off[next_part];
      if (n > sizeof out) n = sizeof out;
      memcpy(out, pay + part_off[next_part], n);
      next_part++;
    }
    pthread_mutex_unlock(&pay_mu);
    if (!more) return;
    send_all(c, out, n);
  }
}

static void *serve(void *ud) {
  int lfd = *(int *)ud;
  char sink[4096];
  static uint8_t out[1 << 17];
  for (;;) {
    size_t n;
    int c = accept(lfd, NULL, NULL), keep;
    if (c < 0) continue;
    pthread_mutex_lock(&pay_mu);
    keep = pay_keep;
    pthread_mutex_unlock(&pay_mu);
    if (keep) {
      serve_keep(c);
      shutdown(c, SHUT_WR);
      while (recv(c, sink, sizeof sink, 0) > 0) {}
      close(c);
      continue;
    }
    pthread_mutex_lock(&pay_mu);        /* the client waits for us: pay is this exchange's */
    n = pay ? (pay_n < sizeof out ? pay_n : sizeof out) : 0;   /* a late connection: nothing */
    if (n) memcpy(out, pay, n);
    pthread_mutex_unlock(&pay_mu);
    for (size_t off = 0; off < n;) {
      ssize_t w = send(c, out + off, n - off, MSG_NOSIGNAL);
      if (w <= 0) break;
      off += (size_t)w;
    }
    shutdown(c, SHUT_WR);
    while (recv(c, sink, sizeof sink, 0) > 0) {}
    close(c);
  }
  return NULL;
}

static void start_server(void) {
  static int lfd;
  struct sockaddr_un a;
  pthread_t t;
  snprintf(sock_path, sizeof sock_path, "/tmp/ibkr-fuzz-%d.sock", (int)getpid());
  unlink(sock_path);
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  memcpy(a.sun_path, sock_path, strlen(sock_path));
  lfd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 4) != 0) FAIL("listen");
  if (pthread_create(&t, NULL, serve, &lfd) != 0) FAIL("thread");
  pthread_detach(t);
}

static void remove_sock(void) { unlink(sock_path); }

/* plug(session): the session talks to the canned-response server */
static int l_plug(lua_State *LL) {
  session *s = luaL_checkudata(LL, 1, SESSION_MT);
  curl_easy_setopt(s->home.tmpl, CURLOPT_UNIX_SOCKET_PATH, sock_path);
  curl_easy_setopt(s->home.tmpl, CURLOPT_FORBID_REUSE, lua_toboolean(LL, 2) ? 0L : 1L);
  if (getenv("FUZZ_DEBUG")) curl_easy_setopt(s->home.tmpl, CURLOPT_VERBOSE, 1L);
  return 0;
}

/* url(request) -> the URL handed to libcurl for the request's exchange (its
** text, or the parsed URL the session's cache gave it);
** hdrs(request) -> its per-call header lines */
static int l_url(lua_State *LL) {
  request *r = luaL_checkudata(LL, 1, REQUEST_MT);
  char *u = NULL;
  if (r->x.url) {                      /* its own text */
    lua_pushstring(LL, r->x.url);
  } else if (r->x.uh && curl_url_get(r->x.uh, CURLUPART_URL, &u, 0) == CURLUE_OK) {
    lua_pushstring(LL, u);             /* the parsed URL from the session's cache, as libcurl sends it */
    curl_free(u);
  } else {
    lua_pushstring(LL, "");
  }
  return 1;
}

static int l_hdrs(lua_State *LL) {
  request *r = luaL_checkudata(LL, 1, REQUEST_MT);
  int i = 0;
  lua_newtable(LL);
  for (struct curl_slist *l = r->x.callh; l; l = l->next) {
    lua_pushstring(LL, l->data);
    lua_rawseti(LL, -2, ++i);
  }
  return 1;
}

/* ------------------------------------------------------ the Lua driver */

static const char driver[] =
  "local core, plug, url, hdrs = ...\n"
  "local TWO53 = 2^53\n"
  "local KINDS = { connect=1, timeout=1, tls=1, http=1, json=1, too_large=1, protocol=1 }\n"
  "local function walk(v, depth)\n"
  "  if depth > 300 then error('decoded value deeper than the limit') end\n"
  "  if type(v) == 'number' and math.type(v) == 'float' and v == math.floor(v)\n"
  "     and math.abs(v) < TWO53 then error('integral float left: ' .. v) end\n"
  "  if type(v) == 'table' then\n"
  "    for k, x in pairs(v) do\n"
  "      if type(k) == 'string' and x == core.null then error('null kept under key ' .. k) end\n"
  "      walk(x, depth + 1)\n"
  "    end\n"
  "  end\n"
  "end\n"
  "local function check_result(r, e, st, max_body)\n"
  "  if r ~= nil then\n"
  "    assert(e == nil and math.type(st) == 'integer' and st >= 200 and st < 300, 'bad success shape')\n"
  "    walk(r, 0)\n"
  "    return\n"
  "  end\n"
  "  assert(core.is_error(e), 'not an error object')\n"
  "  assert(KINDS[e.kind], 'undocumented kind ' .. tostring(e.kind))\n"
  "  assert(type(e.message) == 'string', 'no message')\n"
  "  assert(type(tostring(e)) == 'string')\n"
  "  if e.body then assert(#e.body <= 4096 and #e.body <= max_body, 'body not cut') end\n"
  "  if e.status then assert(math.type(e.status) == 'integer') end\n"
  "  if e.retry_after then assert(math.type(e.retry_after) == 'integer' and e.retry_after > 0) end\n"
  "  if e.kind == 'http' then assert(e.status and (e.status < 200 or e.status >= 300)) end\n"
  "  if e.data ~= nil then walk(e.data, 0) end\n"
  "end\n"
  "local M = {}\n"
  "function M.decode(data)\n"
  "  local v, err = core.decode(data)\n"
  "  if err then\n"
  "    assert(v == nil and core.is_error(err) and err.kind == 'json')\n"
  "  else\n"
  "    walk(v, 0)\n"
  "  end\n"
  "end\n"
  "function M.exchange(param, max_body)\n"
  "  local s = core.new{ base_url = 'http://127.0.0.1:9/v1/api', timeout = 5, max_body = max_body }\n"
  "  plug(s)\n"
  "  local method = ({'GET', 'POST', 'HEAD', 'DELETE'})[(param >> 1) % 4 + 1]\n"
  "  local r, e, st\n"
  "  if param % 2 == 0 then\n"
  "    r, e, st = s:perform(method, '/x')\n"
  "  else\n"
  "    local req = s:start(method, '/x')\n"
  "    while not req:step() do req:wait(0.05) end\n"
  "    r, e, st = req:result()\n"
  "    req:close()\n"
  "  end\n"
  "  if os.getenv('FUZZ_DEBUG') then print(method, r, e, st) end\n"
  "  check_result(r, e, st, max_body)\n"
  "  assert(not s:busy(), 'session left busy')\n"
  "  s:close()\n"
  "end\n"
  "function M.keep(nparts, param, max_body)\n"
  "  local s = core.new{ base_url = 'http://127.0.0.1:9/v1/api', timeout = 5, max_body = max_body }\n"
  "  plug(s, true)\n"
  "  for i = 1, nparts do\n"
  "    local method = ({'GET', 'POST', 'HEAD', 'DELETE'})[(param >> i) % 4 + 1]\n"
  "    local r, e, st\n"
  "    if (param >> (i + 2)) % 2 == 0 then\n"
  "      r, e, st = s:perform(method, '/x', { timeout = 0.5 })\n"
  "    else\n"
  "      local req = s:start(method, '/x', { timeout = 0.5 })\n"
  "      while not req:step() do req:wait(0.05) end\n"
  "      r, e, st = req:result()\n"
  "      req:close()\n"
  "    end\n"
  "    check_result(r, e, st, max_body)\n"
  "  end\n"
  "  assert(not s:busy(), 'a request left in flight')\n"
  "  s:close()\n"
  "end\n"
  "local s_build = core.new{ base_url = 'http://127.0.0.1:9/v1/api' }\n"
  "function M.build(path, hn, hv, qk, qv)\n"
  "  local ok, req = pcall(s_build.start, s_build, 'GET', path,\n"
  "                        { headers = { [hn] = hv }, query = { [qk] = qv } })\n"
  "  if not ok then return end\n"
  "  assert(req, 'start failed without raising')\n"
  "  local u = url(req)\n"
  "  local base = 'http://127.0.0.1:9/v1/api'\n"
  "  assert(u:sub(1, #base) == base, 'URL lost its base')\n"
  "  if u:find('[%z\\1-\\32\\127]') then error('control character in URL: ' .. u) end\n"
  "  for _, h in ipairs(hdrs(req)) do\n"
  "    if h:find('[%z\\r\\n]') then error('CR/LF/NUL in a header line') end\n"
  "  end\n"
  "  req:close()\n"
  "  assert(not s_build:busy())\n"
  "end\n"
  "return M\n";

static int drv;                        /* registry ref of the driver table */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  start_server();
  atexit(remove_sock);
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_requiref(L, "ibkr.core", luaopen_ibkr_core, 0);          /* core */
  if (luaL_loadbuffer(L, driver, sizeof driver - 1, "=driver") != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    abort();
  }
  lua_insert(L, -2);                                               /* chunk, core */
  lua_pushcfunction(L, l_plug);
  lua_pushcfunction(L, l_url);
  lua_pushcfunction(L, l_hdrs);
  if (lua_pcall(L, 4, 1, 0) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    abort();
  }
  drv = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* call driver[name] with nargs values already pushed; abort on a Lua error */
static void call(const char *name, int nargs) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, drv);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  lua_insert(L, -(nargs + 1));
  if (lua_pcall(L, nargs, 0, 0) != LUA_OK) FAIL("%s: %s", name, lua_tostring(L, -1));
}

static void mode_accumulate(unsigned param, const uint8_t *d, size_t n) {
  xfer s;
  size_t max_body = n > 0 && d[0] == 0xFF ? 8u << 20 : (size_t)(n > 1 ? ((d[0] << 4) | (d[1] & 15)) : 0) % 4096 + 1;
  size_t chunk = param % 61 + 1, fed = 0, accepted = 0;
  int refused = 0;
  memset(&s, 0, sizeof s);
  s.max_body = max_body;
  while (fed < n) {
    size_t len = n - fed < chunk ? n - fed : chunk;
    size_t got = on_write((char *)d + fed, 1, len, &s);
    if (got != len && got != 0) FAIL("partial write accepted");
    if (got == 0) {
      refused = 1;
      break;
    }
    accepted += len;
    fed += len;
  }
  if (s.body.n != accepted) FAIL("buffer holds %zu, accepted %zu", s.body.n, accepted);
  if (s.body.n > max_body) FAIL("buffer over max_body");
  if (refused != s.overflow) FAIL("overflow flag wrong");
  if (refused != (n > max_body)) FAIL("refused=%d with n=%zu max=%zu", refused, n, max_body);
  if (accepted && memcmp(s.body.p, d, accepted) != 0) FAIL("buffer content differs");
  if (accepted && s.body.p[accepted] != '\0') FAIL("buffer not terminated");
  buf_free(&s.body);
}

static void mode_exchange(unsigned param, const uint8_t *d, size_t n) {
  lua_Integer max_body = (param & 0x80) ? 64 : 8 << 20;
  pthread_mutex_lock(&pay_mu);
  pay = (uint8_t *)d;
  pay_n = n;
  pthread_mutex_unlock(&pay_mu);
  lua_pushinteger(L, param & 0x7f);
  lua_pushinteger(L, max_body);
  call("exchange", 2);
  pthread_mutex_lock(&pay_mu);        /* libFuzzer frees d after we return */
  pay = NULL;
  pay_n = 0;
  pthread_mutex_unlock(&pay_mu);
}

static void mode_keep(unsigned param, const uint8_t *d, size_t n) {
  lua_Integer max_body = (param & 0x80) ? 64 : 8 << 20;
  pthread_mutex_lock(&pay_mu);
  pay = (uint8_t *)d;
  pay_n = n;
  pay_keep = 1;
  nparts = 0;
  next_part = 0;
  part_off[0] = 0;
  for (size_t i = 0; i < n && nparts < 3; i++)
    if (d[i] == 0xFE) part_off[++nparts] = i + 1;
  part_off[++nparts] = n + 1;            /* the last part runs to the end (no separator) */
  pthread_mutex_unlock(&pay_mu);
  lua_pushinteger(L, nparts);
  lua_pushinteger(L, param);
  lua_pushinteger(L, max_body);
  call("keep", 3);
  pthread_mutex_lock(&pay_mu);
  pay = NULL;
  pay_n = 0;
  pay_keep = 0;
  nparts = next_part = 0;
  pthread_mutex_unlock(&pay_mu);
}

static void mode_build(const uint8_t *d, size_t n) {
  const uint8_t *p = d, *end = d + n;
  for (int i = 0; i < 5; i++) {
    const uint8_t *q = memchr(p, 0xFF, (size_t)(end - p));
    if (q == NULL) q = end;
    lua_pushlstring(L, (const char *)p, (size_t)(q - p));
    p = q < end ? q + 1 : end;
  }
  call("build", 5);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  unsigned mode, param;
  if (size < 2) return 0;
  mode = data[0] % 5;
  param = data[1];
  data += 2;
  size -= 2;
  switch (mode) {
    case 0:
      lua_pushlstring(L, (const char *)data, size);
      call("decode", 1);
      break;
    case 1: mode_accumulate(param, data, size); break;
    case 2: mode_exchange(param, data, size); break;
    case 3: mode_build(data, size); break;
    case 4: mode_keep(param, data, size); break;
  }
  lua_settop(L, 0);
  return 0;
}
