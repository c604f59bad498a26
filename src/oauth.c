/*
** oauth.c -- the crypto of IBKR's OAuth 1.0a (live session token, request
** signatures) and OAuth 2.0 (RS256 JWTs, RFC 7515/7519) on OpenSSL's
** libcrypto EVP APIs. Registered from luaopen as the table `core.oauth`:
** two objects holding the secrets in C memory (wiped on close) -- the
** OAuth 1.0a signer and the OAuth 2.0 JWT key -- and the primitives the
** mock's server side needs. Both sign with one RSA-SHA256 helper and encode
** with one base64 helper (standard or URL-safe). The flows live in
** lua/ibkr/oauth.lua and lua/ibkr/oauth2.lua; docs/oauth.md.
** Adds to the module: core.oauth, the "ibkr.oauth" and "ibkr.jwt" classes.
** Called by: core.c.
** Calls: nothing of ours.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "ibkr.h"

#define OAUTH_MT "ibkr.oauth"
#define JWT_MT "ibkr.jwt"
#define MAX_KEY_FILE (64 * 1024)   /* a PEM key file is a few KB */
#define DH_RANDOM_BITS 256         /* IBKR: a random 256-bit exponent */
#define MAX_RSA_BYTES 1024         /* RSA keys up to 8192 bits */
#define JWT_MIN_BITS 2048          /* RS256 keys: at least 2048 bits (RFC 7518 3.3) */
#define MAX_JWT_PART (64 * 1024)   /* bytes of a JWT header or claims set */

/*
** The signer. Every field holds secret material or is derived from it; all
** of it is wiped and freed by oauth_wipe (close, __gc, __close).
*/
typedef struct oauth {
  EVP_PKEY *sigkey;           /* RSA private signature key */
  unsigned char *secret;      /* the decrypted access token secret (the prepend's bytes) */
  size_t secretlen;
  BIGNUM *p, *g;              /* Diffie-Hellman group */
  BIGNUM *a;                  /* this handshake's private exponent, NULL outside one */
  unsigned char lst[EVP_MAX_MD_SIZE];  /* live session token (raw bytes) */
  unsigned int lstlen;        /* 0 = no token */
  int closed;
} oauth;

/* ---------------------------------------------------------------- helpers */

static void wipe_free(void *p, size_t n) {
  if (p) {
    OPENSSL_cleanse(p, n);
    free(p);
  }
}

static void oauth_wipe(oauth *o) {
  EVP_PKEY_free(o->sigkey);
  o->sigkey = NULL;
  wipe_free(o->secret, o->secretlen);
  o->secret = NULL;
  o->secretlen = 0;
  BN_free(o->p);
  BN_free(o->g);
  BN_clear_free(o->a);
  o->p = o->g = o->a = NULL;
  OPENSSL_cleanse(o->lst, sizeof o->lst);
  o->lstlen = 0;
  o->closed = 1;
}

static oauth *checkoauth(lua_State *L) {
  oauth *o = (oauth *)luaL_checkudata(L, 1, OAUTH_MT);
  if (o->closed) luaL_error(L, "oauth: signer is closed");
  return o;
}

/* lowercase hex of n bytes into a new Lua string */
static void push_hex(lua_State *L, const unsigned char *p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, 2 * n);
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  luaL_pushresultsize(&b, 2 * n);
}

/* a BIGNUM as lowercase hex without leading zeros (Python's hex(x)[2:]) */
static int push_bn_hex(lua_State *L, const BIGNUM *x) {
  char *h = BN_bn2hex(x);
  if (!h) return 0;
  const char *s = h;
  while (*s == '0' && s[1] != '\0') s++;
  size_t n = strlen(s);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n);
  for (size_t i = 0; i < n; i++) out[i] = (char)(s[i] >= 'A' && s[i] <= 'F' ? s[i] + 32 : s[i]);
  luaL_pushresultsize(&b, n);
  OPENSSL_free(h);
  return 1;
}

/* strict hex -> BIGNUM (no sign, no prefix, no blanks); NULL when malformed */
static BIGNUM *hex_bn(const char *s, size_t n) {
  BIGNUM *x = NULL;
  if (n == 0 || n > 8192) return NULL;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return NULL;
  }
  if (BN_hex2bn(&x, s) != (int)n) {
    BN_free(x);
    return NULL;
  }
  return x;
}

/*
** base64 of p[0..n) without line breaks, via EVP_EncodeBlock: the standard
** alphabet with padding, or with url set base64url as JWTs use it (RFC 7515
** section 2: '-' and '_' for '+' and '/', no padding). Appended to b.
*/
static void add_b64(luaL_Buffer *b, const unsigned char *p, size_t n, int url) {
  size_t cap = 4 * ((n + 2) / 3) + 1;
  char *out = luaL_prepbuffsize(b, cap);
  size_t len = (size_t)EVP_EncodeBlock((unsigned char *)out, p, (int)n);
  if (url) {
    while (len > 0 && out[len - 1] == '=') len--;
    for (size_t i = 0; i < len; i++) {
      if (out[i] == '+') out[i] = '-';
      else if (out[i] == '/') out[i] = '_';
    }
  }
  luaL_addsize(b, len);
}

static void push_b64(lua_State *L, const unsigned char *p, size_t n, int url) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  add_b64(&b, p, n, url);
  luaL_pushresult(&b);
}

/*
** Strict base64 decode into a malloc'd buffer (the caller wipes and frees
** it): length a multiple of 4, padding only at the end. EVP_DecodeBlock
** counts the padding as zero bytes; they are taken off here.
*/
static unsigned char *b64_decode(const char *s, size_t n, size_t *outlen) {
  size_t pad = 0;
  if (n == 0 || n % 4 != 0 || n > (1u << 24)) return NULL;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
             c == '+' || c == '/';
    if (c == '=' && i >= n - 2) {
      pad++;
      continue;
    }
    if (!ok || pad) return NULL;
  }
  unsigned char *out = malloc(3 * (n / 4) + 1);
  if (!out) return NULL;
  int len = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
  if (len < 0 || (size_t)len < pad) {
    free(out);
    return NULL;
  }
  *outlen = (size_t)len - pad;
  return out;
}

/*
** Strict base64url (RFC 7515 section 2: '-' and '_', no padding) into a
** malloc'd buffer: translated to the standard alphabet with its padding,
** then decoded as above. A length of 1 mod 4 is no encoding of any bytes.
*/
static unsigned char *b64url_decode(const char *s, size_t n, size_t *outlen) {
  if (n == 0 || n % 4 == 1 || n > (1u << 24)) return NULL;
  size_t m = (n + 3) / 4 * 4;
  char *t = malloc(m);
  if (!t) return NULL;
  for (size_t i = 0; i < m; i++) {
    char c = i < n ? s[i] : '=';
    if (i < n && (c == '+' || c == '/' || c == '=')) {
      free(t);
      return NULL;
    }
    t[i] = c == '-' ? '+' : c == '_' ? '/' : c;
  }
  unsigned char *out = b64_decode(t, m, outlen);
  wipe_free(t, m);
  return out;
}

/* PEM passwords are never asked for (no prompt on a terminal) */
static int no_password(char *buf, int size, int rwflag, void *u) {
  (void)buf; (void)size; (void)rwflag; (void)u;
  return -1;
}

static EVP_PKEY *pem_private(const char *pem, size_t n) {
  BIO *bio = BIO_new_mem_buf(pem, (int)n);
  if (!bio) return NULL;
  EVP_PKEY *k = PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL);
  BIO_free(bio);
  if (k && EVP_PKEY_get_base_id(k) != EVP_PKEY_RSA) {
    EVP_PKEY_free(k);
    k = NULL;
  }
  return k;
}

static EVP_PKEY *pem_public(const char *pem, size_t n) {
  BIO *bio = BIO_new_mem_buf(pem, (int)n);
  if (!bio) return NULL;
  EVP_PKEY *k = PEM_read_bio_PUBKEY(bio, NULL, no_password, NULL);
  BIO_free(bio);
  return k;
}

/*
** Reads a key file into a malloc'd buffer (wiped by the caller). Refused
** when group or others may read or write it, checked on the open file so
** the check and the read see the same file. Returns NULL and sets *why.
*/
static char *read_key_file(const char *path, size_t *n, const char **why) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  char *buf = NULL;
  if (fd < 0) { *why = strerror(errno); return NULL; }
  if (fstat(fd, &st) != 0) *why = strerror(errno);
  else if (!S_ISREG(st.st_mode)) *why = "not a regular file";
  else if (st.st_mode & (S_IRWXG | S_IRWXO)) *why = "readable or writable by group or others (chmod 600)";
  else if (st.st_size <= 0 || st.st_size > MAX_KEY_FILE) *why = "empty or too large";
  else if (!(buf = malloc((size_t)st.st_size + 1))) *why = "out of memory";
  else {
    ssize_t got = read(fd, buf, (size_t)st.st_size);
    if (got != st.st_size) {
      wipe_free(buf, (size_t)st.st_size + 1);
      buf = NULL;
      *why = "short read";
    } else {
      *n = (size_t)got;
      buf[got] = '\0';
    }
  }
  close(fd);
  return buf;
}

/*
** The RSA private key named by field `name` (PEM string) or `name`_file of
** table t (the Lua layer checked that exactly one is there). Raises naming
** the field, after `who` ("oauth", "oauth2"); the key text is never in a
** message.
*/
static EVP_PKEY *load_key(lua_State *L, int t, const char *name, const char *who) {
  size_t n;
  EVP_PKEY *k;
  lua_getfield(L, t, name);
  const char *pem = lua_tolstring(L, -1, &n);
  if (pem) {
    k = pem_private(pem, n);
    lua_pop(L, 1);
    if (!k) luaL_error(L, "%s: '%s' is not an unencrypted RSA private key in PEM form", who, name);
    return k;
  }
  lua_pop(L, 1);
  lua_pushfstring(L, "%s_file", name);
  const char *field = lua_tostring(L, -1);
  lua_getfield(L, t, field);
  const char *path = lua_tostring(L, -1);
  if (!path) luaL_error(L, "%s: '%s' or '%s' is required", who, name, field);
  const char *why = NULL;
  char *buf = read_key_file(path, &n, &why);
  if (!buf) luaL_error(L, "%s: '%s' (%s): %s", who, field, path, why);
  k = pem_private(buf, n);
  wipe_free(buf, n + 1);
  if (!k) luaL_error(L, "%s: '%s' (%s) is not an unencrypted RSA private key in PEM form", who, field, path);
  lua_pop(L, 2);
  return k;
}

/*
** RSA-SHA256 with PKCS#1 v1.5 padding (RS256 in JWT terms) by key k over
** a .. b (b may be empty): the one signer of both OAuth flows (OAuth 1.0a:
** prepend .. base string; OAuth 2.0: the JWT's signing input). sig holds
** MAX_RSA_BYTES; *siglen gets the signature's length. Returns 0 on failure.
*/
static int rsa_sha256(EVP_PKEY *k, const void *a, size_t an, const void *b, size_t bn,
                      unsigned char *sig, size_t *siglen) {
  *siglen = MAX_RSA_BYTES;
  if (EVP_PKEY_get_size(k) > MAX_RSA_BYTES) return 0;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k) > 0 &&
           EVP_DigestSignUpdate(md, a, an) > 0 && (bn == 0 || EVP_DigestSignUpdate(md, b, bn) > 0) &&
           EVP_DigestSignFinal(md, sig, siglen) > 0;
  EVP_MD_CTX_free(md);
  return ok;
}

/* ----------------------------------------------------------------- signer */

/*
** The access token secret: base64 of the secret RSA PKCS#1 v1.5-encrypted
** with the encryption key. Returns NULL or the reason it failed; never
** raises (the caller holds the encryption key).
*/
static const char *decrypt_secret(oauth *o, EVP_PKEY *enc, const char *b64, size_t n) {
  size_t clen = 0, plen = 0;
  unsigned char *cipher = b64_decode(b64, n, &clen);
  if (!cipher) return "'access_token_secret' is not base64";
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(enc, NULL);
  int ok = ctx && EVP_PKEY_decrypt_init(ctx) > 0 &&
           EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0 &&
           EVP_PKEY_decrypt(ctx, NULL, &plen, cipher, clen) > 0 &&
           (o->secret = malloc(plen ? plen : 1)) != NULL &&
           EVP_PKEY_decrypt(ctx, o->secret, &plen, cipher, clen) > 0 && plen > 0;
  EVP_PKEY_CTX_free(ctx);
  wipe_free(cipher, clen);
  if (!ok) {
    wipe_free(o->secret, plen);
    o->secret = NULL;
    return "'access_token_secret' does not decrypt with the encryption key";
  }
  o->secretlen = plen;
  return NULL;
}

static void load_group(lua_State *L, oauth *o, int t) {
  size_t n;
  lua_getfield(L, t, "dh_prime");
  const char *hex = lua_tolstring(L, -1, &n);
  if (!hex || !(o->p = hex_bn(hex, n)) || BN_num_bits(o->p) < 256 || !BN_is_odd(o->p))
    luaL_error(L, "oauth: 'dh_prime' must be the hex of an odd prime of at least 256 bits");
  lua_getfield(L, t, "dh_generator");
  lua_Integer g = lua_tointeger(L, -1);
  if (g < 2) luaL_error(L, "oauth: 'dh_generator' must be an integer >= 2");
  o->g = BN_new();
  if (!o->g || !BN_set_word(o->g, (BN_ULONG)g) || BN_cmp(o->g, o->p) >= 0)
    luaL_error(L, "oauth: 'dh_generator' must be smaller than 'dh_prime'");
  lua_pop(L, 2);
}

/*
** core.oauth.new{signature_key | signature_key_file, encryption_key |
** encryption_key_file, access_token_secret, dh_prime, dh_generator}.
** The userdata is pushed first in a safe empty state (newprefile), so a
** raise at any later step leaves __gc to free what was acquired.
*/
static int oauth_new(lua_State *L) {
  size_t n;
  luaL_checktype(L, 1, LUA_TTABLE);
  oauth *o = (oauth *)lua_newuserdatauv(L, sizeof *o, 0);
  memset(o, 0, sizeof *o);
  luaL_setmetatable(L, OAUTH_MT);                 /* t, o */
  lua_getfield(L, 1, "access_token_secret");      /* t, o, secret */
  const char *secret = lua_tolstring(L, -1, &n);
  if (!secret) return luaL_error(L, "oauth: 'access_token_secret' is required");
  o->sigkey = load_key(L, 1, "signature_key", "oauth");
  EVP_PKEY *enc = load_key(L, 1, "encryption_key", "oauth");
  const char *why = decrypt_secret(o, enc, secret, n);
  EVP_PKEY_free(enc);
  if (why) return luaL_error(L, "oauth: %s", why);
  lua_pop(L, 1);                                  /* t, o */
  load_group(L, o, 1);
  return 1;
}

/*
** o:challenge([a_hex]) -> A: starts a handshake with a fresh random 256-bit
** exponent a (kept here until finish) and returns g^a mod p as lowercase hex.
** a_hex fixes the exponent: for the worked example and its spec only.
*/
static int oauth_challenge(lua_State *L) {
  oauth *o = checkoauth(L);
  size_t n;
  const char *fixed = luaL_optlstring(L, 2, NULL, &n);
  BN_clear_free(o->a);
  o->a = fixed ? hex_bn(fixed, n) : BN_secure_new();
  if (!o->a) return luaL_error(L, fixed ? "oauth: bad exponent" : "oauth: out of memory");
  if (!fixed && !BN_priv_rand(o->a, DH_RANDOM_BITS, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY))
    return luaL_error(L, "oauth: no random exponent");
  BN_set_flags(o->a, BN_FLG_CONSTTIME);
  BN_CTX *ctx = BN_CTX_new();
  BIGNUM *A = BN_new();
  int ok = ctx && A && BN_mod_exp(A, o->g, o->a, o->p, ctx) && push_bn_hex(L, A);
  BN_free(A);
  BN_CTX_free(ctx);
  if (!ok) return luaL_error(L, "oauth: Diffie-Hellman challenge failed");
  return 1;
}

/*
** o:sign_rsa(base) -> base64 RSA-SHA256 (PKCS#1 v1.5) signature of
** prepend .. base, prepend being the hex of the decrypted secret. The
** prepended message is built in C memory and wiped.
*/
static int oauth_sign_rsa(lua_State *L) {
  oauth *o = checkoauth(L);
  size_t bn, hl = 2 * o->secretlen, siglen;
  const char *base = luaL_checklstring(L, 2, &bn);
  static const char digits[] = "0123456789abcdef";
  unsigned char sig[MAX_RSA_BYTES];  /* on the stack: nothing to free if pushing raises */
  unsigned char *prepend = malloc(hl + 1);
  if (!prepend) return luaL_error(L, "oauth: out of memory");
  for (size_t i = 0; i < o->secretlen; i++) {
    prepend[2 * i] = (unsigned char)digits[o->secret[i] >> 4];
    prepend[2 * i + 1] = (unsigned char)digits[o->secret[i] & 15];
  }
  int ok = rsa_sha256(o->sigkey, prepend, hl, base, bn, sig, &siglen);
  wipe_free(prepend, hl + 1);
  if (!ok) return luaL_error(L, "oauth: RSA-SHA256 signing failed");
  push_b64(L, sig, siglen, 0);
  return 1;
}

/* K as IBKR's clients turn it into bytes: big-endian, with a leading zero
** byte when the top bit is set (a Java BigInteger's toByteArray) */
static unsigned char *dh_key_bytes(const BIGNUM *K, size_t *n) {
  int bytes = BN_num_bytes(K), lead = BN_num_bits(K) % 8 == 0 ? 1 : 0;
  unsigned char *out = malloc((size_t)bytes + 1);
  if (!out) return NULL;
  out[0] = 0;
  BN_bn2bin(K, out + lead);
  *n = (size_t)bytes + (size_t)lead;
  return out;
}

/* LST = HMAC-SHA1(key = K bytes, msg = secret); K = B^a mod p. 0 on failure */
static int derive_lst(oauth *o, const BIGNUM *B) {
  BN_CTX *ctx = BN_CTX_new();
  BIGNUM *K = BN_secure_new(), *pm1 = BN_dup(o->p);
  unsigned char *kb = NULL;
  size_t kn = 0;
  int ok = ctx && K && pm1 && BN_sub_word(pm1, 1) &&
           BN_cmp(B, BN_value_one()) > 0 && BN_cmp(B, pm1) < 0 &&   /* 1 < B < p-1 */
           BN_mod_exp(K, B, o->a, o->p, ctx) && (kb = dh_key_bytes(K, &kn)) != NULL &&
           HMAC(EVP_sha1(), kb, (int)kn, o->secret, o->secretlen, o->lst, &o->lstlen) != NULL;
  wipe_free(kb, kn);
  BN_clear_free(K);
  BN_free(pm1);
  BN_CTX_free(ctx);
  return ok;
}

/*
** o:finish(B_hex, lst_signature_hex, consumer_key) -> true | nil, reason.
** Derives the LST and accepts it only when hex HMAC-SHA1(LST, consumer_key)
** equals the server's signature. The exponent a is wiped either way; the
** previous token stays in use until a new one is accepted.
*/
static int oauth_finish(lua_State *L) {
  oauth *o = checkoauth(L);
  size_t bn, sn, cn;
  const char *bhex = luaL_checklstring(L, 2, &bn);
  const char *sighex = luaL_checklstring(L, 3, &sn);
  const char *ck = luaL_checklstring(L, 4, &cn);
  unsigned char prev[EVP_MAX_MD_SIZE], mac[EVP_MAX_MD_SIZE];
  unsigned int prevlen = o->lstlen, maclen = 0;
  const char *why = NULL;
  memcpy(prev, o->lst, sizeof prev);
  BIGNUM *B = hex_bn(bhex, bn);
  if (!o->a) why = "no handshake in progress";
  else if (!B) why = "diffie_hellman_response is not hex";
  else if (!derive_lst(o, B)) why = "diffie_hellman_response is out of range";
  else if (!HMAC(EVP_sha1(), o->lst, (int)o->lstlen, (const unsigned char *)ck, cn, mac, &maclen)) why = "HMAC failed";
  else {
    char hex[2 * EVP_MAX_MD_SIZE];
    static const char digits[] = "0123456789abcdef";
    for (unsigned int i = 0; i < maclen; i++) {
      hex[2 * i] = digits[mac[i] >> 4];
      hex[2 * i + 1] = digits[mac[i] & 15];
    }
    char low[2 * EVP_MAX_MD_SIZE];
    for (size_t i = 0; i < sn && i < sizeof low; i++)
      low[i] = (char)(sighex[i] >= 'A' && sighex[i] <= 'F' ? sighex[i] + 32 : sighex[i]);
    if (sn != 2 * (size_t)maclen || CRYPTO_memcmp(hex, low, sn) != 0)
      why = "live_session_token_signature does not match the computed token";
  }
  BN_free(B);
  BN_clear_free(o->a);
  o->a = NULL;
  if (why) {  /* keep the token in use before this handshake */
    memcpy(o->lst, prev, sizeof prev);
    o->lstlen = prevlen;
  }
  OPENSSL_cleanse(prev, sizeof prev);
  if (why) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* o:sign(base) -> base64 HMAC-SHA256(key = LST bytes, msg = base) */
static int oauth_sign(lua_State *L) {
  oauth *o = checkoauth(L);
  size_t n;
  const char *base = luaL_checklstring(L, 2, &n);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (o->lstlen == 0) return luaL_error(L, "oauth: no live session token");
  if (!HMAC(EVP_sha256(), o->lst, (int)o->lstlen, (const unsigned char *)base, n, mac, &len))
    return luaL_error(L, "oauth: HMAC-SHA256 failed");
  push_b64(L, mac, len, 0);
  return 1;
}

static int oauth_has_token(lua_State *L) {
  oauth *o = (oauth *)luaL_checkudata(L, 1, OAUTH_MT);
  lua_pushboolean(L, !o->closed && o->lstlen > 0);
  return 1;
}

/* o:forget(): drops the token (the server refused it); the keys stay */
static int oauth_forget(lua_State *L) {
  oauth *o = checkoauth(L);
  OPENSSL_cleanse(o->lst, sizeof o->lst);
  o->lstlen = 0;
  return 0;
}

/* close, __gc and __close: wipe every secret; idempotent */
static int oauth_close(lua_State *L) {
  oauth *o = (oauth *)luaL_checkudata(L, 1, OAUTH_MT);
  if (!o->closed) oauth_wipe(o);
  return 0;
}

static int oauth_closed(lua_State *L) {
  oauth *o = (oauth *)luaL_checkudata(L, 1, OAUTH_MT);
  lua_pushboolean(L, o->closed);
  return 1;
}

/* never a secret: only whether there is a token */
static int oauth_tostring(lua_State *L) {
  oauth *o = (oauth *)luaL_checkudata(L, 1, OAUTH_MT);
  lua_pushfstring(L, "ibkr.oauth (%s)", o->closed ? "closed" : o->lstlen ? "token" : "no token");
  return 1;
}

/* -------------------------------------------------------------- JWT key */

/*
** The OAuth 2.0 client's RSA private key (private_key_jwt, RFC 7523): it
** signs the client assertion and the SSO session JWT. The key is the only
** secret held here; close, __gc and __close free it (EVP_PKEY_free clears
** the key's numbers).
*/
typedef struct jwt_key {
  EVP_PKEY *key;
  int closed;
} jwt_key;

static jwt_key *checkjwt(lua_State *L) {
  jwt_key *k = (jwt_key *)luaL_checkudata(L, 1, JWT_MT);
  if (k->closed) luaL_error(L, "oauth2: key is closed");
  return k;
}

/*
** core.oauth.jwt_key{private_key = PEM | private_key_file = path}: an RSA
** key of at least JWT_MIN_BITS. Raises "oauth2: '<field>' ..."; pushed
** first in a safe empty state, so __gc frees what a later raise leaves.
*/
static int jwt_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  jwt_key *k = (jwt_key *)lua_newuserdatauv(L, sizeof *k, 0);
  memset(k, 0, sizeof *k);
  luaL_setmetatable(L, JWT_MT);                   /* t, k */
  k->key = load_key(L, 1, "private_key", "oauth2");
  int bits = EVP_PKEY_get_bits(k->key);
  if (bits < JWT_MIN_BITS || EVP_PKEY_get_size(k->key) > MAX_RSA_BYTES) {
    lua_getfield(L, 1, "private_key");
    const char *field = lua_isnil(L, -1) ? "private_key_file" : "private_key";
    return luaL_error(L, "oauth2: '%s' is an RSA key of %d bits: RS256 needs %d to %d bits", field, bits,
                      JWT_MIN_BITS, 8 * MAX_RSA_BYTES);
  }
  return 1;
}

/*
** k:sign(header_json, claims_json) -> the compact JWS (RFC 7515 section
** 7.1): base64url(header) "." base64url(claims) "." base64url(signature),
** the signature RS256 over the first two parts and their dot.
*/
static int jwt_sign(lua_State *L) {
  jwt_key *k = checkjwt(L);
  size_t hn, cn, siglen;
  const char *h = luaL_checklstring(L, 2, &hn), *c = luaL_checklstring(L, 3, &cn);
  unsigned char sig[MAX_RSA_BYTES];
  luaL_argcheck(L, hn <= MAX_JWT_PART, 2, "header too long");
  luaL_argcheck(L, cn <= MAX_JWT_PART, 3, "claims too long");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  add_b64(&b, (const unsigned char *)h, hn, 1);
  luaL_addchar(&b, '.');
  add_b64(&b, (const unsigned char *)c, cn, 1);
  if (!rsa_sha256(k->key, luaL_buffaddr(&b), luaL_bufflen(&b), NULL, 0, sig, &siglen))
    return luaL_error(L, "oauth2: RS256 signing failed");
  luaL_addchar(&b, '.');
  add_b64(&b, sig, siglen, 1);
  luaL_pushresult(&b);
  return 1;
}

static int jwt_bits(lua_State *L) {
  jwt_key *k = checkjwt(L);
  lua_pushinteger(L, EVP_PKEY_get_bits(k->key));
  return 1;
}

/* close, __gc and __close: free the key; idempotent */
static int jwt_close(lua_State *L) {
  jwt_key *k = (jwt_key *)luaL_checkudata(L, 1, JWT_MT);
  if (!k->closed) {
    EVP_PKEY_free(k->key);
    k->key = NULL;
    k->closed = 1;
  }
  return 0;
}

static int jwt_closed(lua_State *L) {
  jwt_key *k = (jwt_key *)luaL_checkudata(L, 1, JWT_MT);
  lua_pushboolean(L, k->closed);
  return 1;
}

/* never the key: its size only */
static int jwt_tostring(lua_State *L) {
  jwt_key *k = (jwt_key *)luaL_checkudata(L, 1, JWT_MT);
  if (k->closed || !k->key) lua_pushliteral(L, "ibkr.jwt (closed)");
  else lua_pushfstring(L, "ibkr.jwt (RSA %d bits)", EVP_PKEY_get_bits(k->key));
  return 1;
}

/* ------------------------------------------------------------- primitives */

/* hmac(alg, key, msg) -> raw MAC; alg "sha1" or "sha256" */
static int prim_hmac(lua_State *L) {
  static const char *const algs[] = {"sha1", "sha256", NULL};
  int alg = luaL_checkoption(L, 1, NULL, algs);
  size_t kn, mn;
  const char *key = luaL_checklstring(L, 2, &kn);
  const char *msg = luaL_checklstring(L, 3, &mn);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(alg ? EVP_sha256() : EVP_sha1(), key, (int)kn, (const unsigned char *)msg, mn, mac, &len))
    return luaL_error(L, "oauth: HMAC failed");
  lua_pushlstring(L, (const char *)mac, len);
  return 1;
}

static int b64encode_with(lua_State *L, int url) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  push_b64(L, (const unsigned char *)s, n, url);
  return 1;
}

/* b64decode(s) / b64url_decode(s) -> bytes, or nil when s is not strict base64 (base64url) */
static int b64decode_with(lua_State *L, int url) {
  size_t n, len = 0;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char *out = url ? b64url_decode(s, n, &len) : b64_decode(s, n, &len);
  if (!out) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, (const char *)out, len);
  wipe_free(out, len);
  return 1;
}

static int prim_b64encode(lua_State *L) { return b64encode_with(L, 0); }
static int prim_b64decode(lua_State *L) { return b64decode_with(L, 0); }
static int prim_b64url_encode(lua_State *L) { return b64encode_with(L, 1); }
static int prim_b64url_decode(lua_State *L) { return b64decode_with(L, 1); }

static int prim_hex(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  push_hex(L, (const unsigned char *)s, n);
  return 1;
}

/* random(n) -> n bytes from the CSPRNG */
static int prim_random(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n > 0 && n <= 4096, 1, "1..4096 bytes");
  unsigned char buf[4096];
  if (RAND_bytes(buf, (int)n) != 1) return luaL_error(L, "oauth: no random bytes");
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  OPENSSL_cleanse(buf, (size_t)n);
  return 1;
}

/* modexp(b_hex, e_hex, m_hex) -> lowercase hex of b^e mod m, or nil on bad hex; each at most
** 8192 bits (IBKR's Diffie-Hellman group has 2048) */
static int prim_modexp(lua_State *L) {
  size_t bn, en, mn;
  const char *bs = luaL_checklstring(L, 1, &bn), *es = luaL_checklstring(L, 2, &en);
  const char *ms = luaL_checklstring(L, 3, &mn);
  for (int i = 1; i <= 3; i++)                  /* a huge exponent would take minutes */
    luaL_argcheck(L, (i == 1 ? bn : i == 2 ? en : mn) <= MAX_RSA_BYTES * 2, i, "more than 8192 bits");
  BIGNUM *b = hex_bn(bs, bn), *e = hex_bn(es, en), *m = hex_bn(ms, mn), *r = BN_new();
  BN_CTX *ctx = BN_CTX_new();
  int ok = b && e && m && r && ctx && !BN_is_zero(m) && BN_mod_exp(r, b, e, m, ctx);
  if (ok) push_bn_hex(L, r);
  else lua_pushnil(L);
  BN_free(b); BN_clear_free(e); BN_free(m); BN_clear_free(r);
  BN_CTX_free(ctx);
  return 1;
}

/* rsa_verify(public_pem, msg, sig) -> boolean (RSA-SHA256, PKCS#1 v1.5) */
static int prim_rsa_verify(lua_State *L) {
  size_t pn, mn, sn;
  const char *pem = luaL_checklstring(L, 1, &pn), *msg = luaL_checklstring(L, 2, &mn);
  const char *sig = luaL_checklstring(L, 3, &sn);
  EVP_PKEY *k = pem_public(pem, pn);
  if (!k) return luaL_error(L, "oauth: not a PEM public key");
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k) > 0 &&
           EVP_DigestVerify(md, (const unsigned char *)sig, sn, (const unsigned char *)msg, mn) == 1;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(k);
  lua_pushboolean(L, ok);
  return 1;
}

/* rsa_encrypt(public_pem, msg) -> ciphertext (PKCS#1 v1.5) */
static int prim_rsa_encrypt(lua_State *L) {
  size_t pn, mn, cn = MAX_RSA_BYTES;
  const char *pem = luaL_checklstring(L, 1, &pn), *msg = luaL_checklstring(L, 2, &mn);
  unsigned char out[MAX_RSA_BYTES];
  EVP_PKEY *k = pem_public(pem, pn);
  if (!k) return luaL_error(L, "oauth: not a PEM public key");
  EVP_PKEY_CTX *ctx = EVP_PKEY_get_size(k) <= MAX_RSA_BYTES ? EVP_PKEY_CTX_new(k, NULL) : NULL;
  int ok = ctx && EVP_PKEY_encrypt_init(ctx) > 0 &&
           EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0 &&
           EVP_PKEY_encrypt(ctx, out, &cn, (const unsigned char *)msg, mn) > 0;
  EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(k);
  if (!ok) return luaL_error(L, "oauth: RSA encryption failed");
  lua_pushlstring(L, (const char *)out, cn);
  return 1;
}

static int push_bio(lua_State *L, BIO *bio) {
  char *p;
  long n = BIO_get_mem_data(bio, &p);
  lua_pushlstring(L, p, (size_t)n);
  return 1;
}

/* rsa_generate(bits) -> private PEM (PKCS#8), public PEM: the mock's test consumer */
static int prim_rsa_generate(lua_State *L) {
  lua_Integer bits = luaL_optinteger(L, 1, 2048);
  luaL_argcheck(L, bits >= 1024 && bits <= 8192, 1, "1024..8192 bits");
  EVP_PKEY *k = EVP_RSA_gen((unsigned int)bits);
  BIO *priv = BIO_new(BIO_s_secmem()), *pub = BIO_new(BIO_s_mem());
  int ok = k && priv && pub && PEM_write_bio_PrivateKey(priv, k, NULL, NULL, 0, NULL, NULL) &&
           PEM_write_bio_PUBKEY(pub, k);
  if (ok) {
    push_bio(L, priv);
    push_bio(L, pub);
  }
  BIO_free(priv);
  BIO_free(pub);
  EVP_PKEY_free(k);
  if (!ok) return luaL_error(L, "oauth: RSA key generation failed");
  return 2;
}

/* now() -> wall-clock seconds (float): oauth_timestamp and the token's expiry are epoch times */
static int prim_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

/* read_private(path) -> contents, or nil, reason: a file only its owner may read (the config) */
static int prim_read_private(lua_State *L) {
  const char *path = luaL_checkstring(L, 1), *why = NULL;
  size_t n = 0;
  char *buf = read_key_file(path, &n, &why);
  if (!buf) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, why);
    return 2;
  }
  lua_pushlstring(L, buf, n);
  wipe_free(buf, n + 1);
  return 1;
}

/*
** write_private(path, text) -> true | nil, reason: a NEW file only its owner
** may read or write (mode 0600 at creation, O_EXCL): an existing file --
** a key file above all -- is never overwritten. What was written of a file
** that could not be finished is removed. The mock's test clients.
*/
static int prim_write_private(lua_State *L) {
  size_t n, done = 0;
  const char *path = luaL_checkstring(L, 1), *text = luaL_checklstring(L, 2, &n);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, S_IRUSR | S_IWUSR);
  const char *why = NULL;
  if (fd < 0) why = errno == EEXIST ? "exists (never overwritten)" : strerror(errno);
  while (!why && done < n) {
    ssize_t w = write(fd, text + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) why = w < 0 ? strerror(errno) : "short write";
    else done += (size_t)w;
  }
  if (fd >= 0 && close(fd) != 0 && !why) why = strerror(errno);
  if (fd >= 0 && why) unlink(path);
  if (why) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, why);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg oauth_funcs[] = {
  {"read_private", prim_read_private},
  {"write_private", prim_write_private},
  {"jwt_key", jwt_new},
  {"new", oauth_new},
  {"now", prim_now},
  {"hmac", prim_hmac},
  {"b64encode", prim_b64encode},
  {"b64decode", prim_b64decode},
  {"b64url_encode", prim_b64url_encode},
  {"b64url_decode", prim_b64url_decode},
  {"hex", prim_hex},
  {"random", prim_random},
  {"modexp", prim_modexp},
  {"rsa_verify", prim_rsa_verify},
  {"rsa_encrypt", prim_rsa_encrypt},
  {"rsa_generate", prim_rsa_generate},
  {NULL, NULL}
};

static const luaL_Reg oauth_meth[] = {
  {"challenge", oauth_challenge},
  {"sign_rsa", oauth_sign_rsa},
  {"finish", oauth_finish},
  {"sign", oauth_sign},
  {"has_token", oauth_has_token},
  {"forget", oauth_forget},
  {"close", oauth_close},
  {"closed", oauth_closed},
  {NULL, NULL}
};

static const luaL_Reg oauth_metameth[] = {
  {"__index", NULL},
  {"__gc", oauth_close},
#if LUA_VERSION_NUM >= 504
  {"__close", oauth_close},
#endif
  {"__tostring", oauth_tostring},
  {NULL, NULL}
};

static const luaL_Reg jwt_meth[] = {
  {"sign", jwt_sign},
  {"bits", jwt_bits},
  {"close", jwt_close},
  {"closed", jwt_closed},
  {NULL, NULL}
};

static const luaL_Reg jwt_metameth[] = {
  {"__gc", jwt_close},
#if LUA_VERSION_NUM >= 504
  {"__close", jwt_close},
#endif
  {"__tostring", jwt_tostring},
  {NULL, NULL}
};

/*
** Called once from luaopen_ibkr_core with the module table on top: sets
** M.oauth (the functions above) and the "ibkr.oauth" and "ibkr.jwt"
** classes.
*/
int oauth_open(lua_State *L) {
  ibkr_createmeta(L, OAUTH_MT, oauth_meth, oauth_metameth);
  ibkr_createmeta(L, JWT_MT, jwt_meth, jwt_metameth);
  luaL_newlib(L, oauth_funcs);                  /* M, oauth */
  lua_setfield(L, -2, "oauth");                 /* M */
  return 0;
}
