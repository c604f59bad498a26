/*
** raw.c -- the floor of `make bench`: one reused libcurl easy handle, the
** response body appended to a reused buffer, no JSON decoding. The options
** that matter match the C core's (HTTP/1.1, NOSIGNAL, no TLS verification
** on loopback, TCP keep-alive, Accept-Encoding offered, the same request
** headers, a body-less POST sent with Content-Length: 0 and no Content-Type).
**
** usage: raw BASE_URL auth|mixed N [WARMUP]
** prints one line: "peer=raw scenario=... n=... wall_us=... cpu_us=... rss_kib=..."
** (per call; cpu = CLOCK_PROCESS_CPUTIME_ID of this process, user + system;
** rss_kib = peak RSS, getrusage ru_maxrss)
*/
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include <curl/curl.h>

typedef struct {
  char *p;
  size_t n, cap;
} buf;

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud) {
  buf *b = ud;
  size_t len = size * nmemb;
  if (b->n + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    char *p;
    while (cap < b->n + len + 1) cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL) return 0;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, data, len);
  b->n += len;
  b->p[b->n] = '\0';
  return len;
}

/* one call of the cycle: method, path, a key the body must contain */
typedef struct {
  int post;
  const char *path;
  const char *key;
  char *url;
} call;

static call AUTH[] = {{1, "/iserver/auth/status", "\"authenticated\"", NULL}};
static call MIXED[] = {
    {1, "/iserver/auth/status", "\"authenticated\"", NULL},
    {1, "/iserver/reauthenticate", "\"message\"", NULL},
    {1, "/logout", "\"status\"", NULL},
    {0, "/sso/validate", "\"RESULT\"", NULL},
    {1, "/tickle", "\"session\"", NULL},
};

static double now(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int one(CURL *e, buf *b, const call *c, struct curl_slist *post0, struct curl_slist *get) {
  long status = 0;
  CURLcode rc;
  b->n = 0;
  curl_easy_setopt(e, CURLOPT_URL, c->url);
  if (c->post) {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, post0);
  } else {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, get);
  }
  rc = curl_easy_perform(e);
  if (rc != CURLE_OK) {
    fprintf(stderr, "raw: %s: %s\n", c->path, curl_easy_strerror(rc));
    return 0;
  }
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  /* "checking a field" without decoding: the key must be in the body */
  if (status != 200 || b->n == 0 || strstr(b->p, c->key) == NULL) {
    fprintf(stderr, "raw: %s: status %ld, unexpected body\n", c->path, status);
    return 0;
  }
  return 1;
}

int main(int argc, char **argv) {
  const char *base, *scen;
  long n, warm, i;
  call *calls;
  int ncalls;
  CURL *e;
  buf b = {NULL, 0, 0};
  struct curl_slist *post0 = NULL, *get = NULL;
  double w0, c0, w1, c1;
  struct rusage ru;

  if (argc < 4) {
    fprintf(stderr, "usage: raw BASE_URL auth|mixed N [WARMUP]\n");
    return 64;
  }
  base = argv[1];
  scen = argv[2];
  n = strtol(argv[3], NULL, 10);
  warm = argc > 4 ? strtol(argv[4], NULL, 10) : 200;
  if (strcmp(scen, "auth") == 0) {
    calls = AUTH;
    ncalls = 1;
  } else if (strcmp(scen, "mixed") == 0) {
    calls = MIXED;
    ncalls = 5;
  } else {
    fprintf(stderr, "raw: unknown scenario %s\n", scen);
    return 64;
  }
  for (int k = 0; k < ncalls; k++) {
    size_t len = strlen(base) + strlen(calls[k].path) + 1;
    calls[k].url = malloc(len);
    if (calls[k].url == NULL) return 1;
    snprintf(calls[k].url, len, "%s%s", base, calls[k].path);
  }

  curl_global_init(CURL_GLOBAL_DEFAULT);
  e = curl_easy_init();
  if (e == NULL) return 1;
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "lua-ibkr/0.1.0");
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)&b);
  post0 = curl_slist_append(post0, "Accept: application/json");
  post0 = curl_slist_append(post0, "Content-Type:");
  get = curl_slist_append(get, "Accept: application/json");
  if (post0 == NULL || get == NULL) return 1;

  for (i = 0; i < warm; i++)
    if (!one(e, &b, &calls[i % ncalls], post0, get)) return 1;
  w0 = now(CLOCK_MONOTONIC);
  c0 = now(CLOCK_PROCESS_CPUTIME_ID);
  for (i = 0; i < n; i++)
    if (!one(e, &b, &calls[i % ncalls], post0, get)) return 1;
  w1 = now(CLOCK_MONOTONIC);
  c1 = now(CLOCK_PROCESS_CPUTIME_ID);

  getrusage(RUSAGE_SELF, &ru);
  printf("peer=raw scenario=%s n=%ld wall_us=%.3f cpu_us=%.3f rss_kib=%ld\n", scen, n,
         (w1 - w0) * 1e6 / (double)n, (c1 - c0) * 1e6 / (double)n, ru.ru_maxrss);
  curl_slist_free_all(post0);
  curl_slist_free_all(get);
  curl_easy_cleanup(e);
  curl_global_cleanup();
  for (int k = 0; k < ncalls; k++) free(calls[k].url);
  free(b.p);
  return 0;
}
