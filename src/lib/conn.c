/*
** conn.c -- the connections libcurl opens, watched for one fault: bytes a
** server sent that no request asked for. libcurl (7.88) reuses a kept-alive
** connection that has unread input, and would hand those bytes to the next
** request as its answer, shifting every later answer by one. So every
** socket is registered when libcurl opens it, and just before a request
** goes out on a connection that was used before (CURLOPT_PREREQFUNCTION)
** its socket is checked: any input there is stale. The socket is then
** replaced, in place, by one whose peer is gone: libcurl's send fails on
** a reused connection, which libcurl answers by sending the request again
** on a new connection (never a duplicate: nothing was sent on the old one).
**
** libcurl names the connection only by its addresses (local and remote
** address and port), so the socket is found by all four: two connections
** from the same local port to the same port of two hosts (127.0.0.1 and
** 127.0.0.2, two gateways on :443) are two sockets, and the check must
** read the right one, or a stale answer goes to the request as its own.
**
** Two more duties ride on the same callbacks: an exchange may forbid new
** sockets (the warm lane's, on the Lua thread: no connect, no handshake
** there), and a lane learns when its kept connection's socket is closed.
** Called by: lib/handle.c, lib/engine.c, lib/transfer.c, lib/wsconn.c; then libcurl, on any thread.
** Calls: nothing of ours.
** Lua-free, like every file in src/lib/.
*/
#define _GNU_SOURCE                  /* dup3 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include "conn.h"

/* both ends of a TCP connection: what identifies it */
typedef struct ends {
  int family;                 /* AF_INET, AF_INET6; 0: not known (yet) */
  unsigned char laddr[16], raddr[16];
  int lport, rport;
} ends;

typedef struct sock {
  curl_socket_t fd;
  ends e;                     /* looked up when first needed: known once connected */
  int used;                   /* a request went out on it already */
  int dead;                   /* replaced by a dead socket: its ends are no longer its own */
} sock;

/* every socket libcurl opened and has not closed, on any thread */
static struct {
  pthread_mutex_t mu;
  sock *v;
  int n, cap;
} registry = { .mu = PTHREAD_MUTEX_INITIALIZER, .v = NULL, .n = 0, .cap = 0 };

/* ud: the exchange's connwatch (CURLOPT_OPENSOCKETDATA), or NULL */
static curl_socket_t on_open(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  connwatch *w = ud;
  curl_socket_t fd;
  (void)purpose;
  if (w && w->refuse) {
    w->refused = 1;
    return CURL_SOCKET_BAD;
  }
  fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (fd == CURL_SOCKET_BAD) return fd;
  pthread_mutex_lock(&registry.mu);
  if (registry.n == registry.cap) {
    int cap = registry.cap ? registry.cap * 2 : 64;
    sock *v = realloc(registry.v, sizeof *v * (size_t)cap);
    if (v) registry.v = v, registry.cap = cap;
  }
  if (registry.n < registry.cap) registry.v[registry.n++] = (sock){ .fd = fd };   /* untracked when out of memory */
  pthread_mutex_unlock(&registry.mu);
  return fd;
}

/* ud (CURLOPT_CLOSESOCKETDATA, kept by the connection from its creation):
** NULL, or where a lane notes its kept socket, forgotten here */
static int on_close(void *ud, curl_socket_t fd) {
  curl_socket_t *keep = ud;
  if (keep && *keep == fd) *keep = CURL_SOCKET_BAD;
  pthread_mutex_lock(&registry.mu);
  for (int i = 0; i < registry.n; i++)
    if (registry.v[i].fd == fd) {
      registry.v[i] = registry.v[--registry.n];
      break;
    }
  pthread_mutex_unlock(&registry.mu);
  return close(fd);
}

/* one end of a socket address into e (local or remote); its family, or 0 */
static int end_of(const struct sockaddr_storage *ss, unsigned char *addr, int *port) {
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    memcpy(addr, &in->sin_addr, 4);
    *port = ntohs(in->sin_port);
    return AF_INET;
  }
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    memcpy(addr, &in6->sin6_addr, 16);
    *port = ntohs(in6->sin6_port);
    return AF_INET6;
  }
  return 0;
}

/* the ends of a connected TCP socket; 0 when not (yet) known */
static int ends_of_fd(curl_socket_t fd, ends *e) {
  struct sockaddr_storage l, r;
  socklen_t ll = sizeof l, rl = sizeof r;
  int lf, rf;
  memset(e, 0, sizeof *e);
  if (getsockname(fd, (struct sockaddr *)&l, &ll) != 0 || getpeername(fd, (struct sockaddr *)&r, &rl) != 0)
    return 0;
  lf = end_of(&l, e->laddr, &e->lport);
  rf = end_of(&r, e->raddr, &e->rport);
  e->family = lf == rf ? lf : 0;
  return e->family != 0;
}

/* the ends libcurl gives as text (its primary and local IP); 0 when they
** are not IP addresses of one family */
static int ends_of_text(const char *rip, const char *lip, int rport, int lport, ends *e) {
  memset(e, 0, sizeof *e);
  e->family = strchr(rip, ':') ? AF_INET6 : AF_INET;
  if (inet_pton(e->family, rip, e->raddr) != 1 || inet_pton(e->family, lip, e->laddr) != 1) return 0;
  e->rport = rport;
  e->lport = lport;
  return 1;
}

static int same_ends(const ends *a, const ends *b) {
  size_t n = a->family == AF_INET ? 4 : 16;
  return a->family == b->family && a->lport == b->lport && a->rport == b->rport &&
         memcmp(a->laddr, b->laddr, n) == 0 && memcmp(a->raddr, b->raddr, n) == 0;
}

/* under registry.mu: the registered socket with ends e, or NULL */
static sock *find(const ends *e) {
  for (int i = 0; i < registry.n; i++) {
    sock *s = &registry.v[i];
    if (s->dead) continue;
    if (s->e.family == 0) ends_of_fd(s->fd, &s->e);
    if (same_ends(&s->e, e)) return s;
  }
  return NULL;
}

/* descriptor fd becomes a copy of descriptor by (close-on-exec), whatever
** it was: the one way a descriptor someone may be watching is replaced */
void conn_replace(int fd, int by) {
#ifdef __linux__
  dup3(by, fd, O_CLOEXEC);
#else
  dup2(by, fd);
  fcntl(fd, F_SETFD, FD_CLOEXEC);
#endif
}

/* under registry.mu: make s a socket whose peer is gone: reads see EOF,
** writes fail (the connection itself is closed) */
static void kill_sock(sock *s) {
  int sv[2];
  s->dead = 1;
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    shutdown(s->fd, SHUT_RDWR);
    return;
  }
  close(sv[1]);
  conn_replace(s->fd, sv[0]);
  close(sv[0]);
}

static int on_prereq(void *ud, char *rip, char *lip, int rport, int lport) {
  ends e;
  sock *s;
  (void)ud;
  if (lport == 0 || !ends_of_text(rip, lip, rport, lport, &e))
    return CURL_PREREQFUNC_OK;                    /* not TCP (a unix socket): nothing to match */
  pthread_mutex_lock(&registry.mu);
  s = find(&e);
  if (s && s->used++) {
    struct pollfd p = { .fd = s->fd, .events = POLLIN };
    if (poll(&p, 1, 0) > 0) kill_sock(s);
  }
  pthread_mutex_unlock(&registry.mu);
  return CURL_PREREQFUNC_OK;
}

/* the callbacks on a session's template (duplicated into every handle);
** each exchange sets their data (handle.c) */
int conn_watch(CURL *e) {
  return curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq) == CURLE_OK;
}

/* fork(): the child starts with the lock free */
void conn_forked(void) {
  pthread_mutex_init(&registry.mu, NULL);
}
