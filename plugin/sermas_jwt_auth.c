/*
 * sermas_jwt_auth: a mosquitto 2.0 plugin (plugin API v5) that makes a local
 * mosquitto behave like the SERMAS platform's broker for authentication and
 * topic access.  Built with sermas_bus (setup.py) for sermas_bus.testing.LocalBus.
 * Plain C: links libcrypto (HMAC-SHA256) and libcjson, never Python.
 *
 * mosquitto.conf, inside every listener (per_listener_settings true) or once
 * globally:
 *
 *     plugin /path/to/_sermas_jwt_auth.so
 *     plugin_opt_secret_file /path/to/secret
 *
 * The secret file holds the raw bytes of the HS256 key, used as they are
 * (no trailing newline is stripped).  It is read once, at start-up.
 *
 * Authentication (MOSQ_EVT_BASIC_AUTH).  The MQTT username must be a JWT
 * whose header says alg "HS256" (and carries no "crit"), whose signature
 * verifies with the secret, whose claims hold a numeric "exp" in the future
 * (fractional seconds allowed), a numeric "nbf" in the past if present, and a
 * non-empty string "appId" without '/', '+' or '#'.  The password is not
 * looked at (SERMAS clients send a placeholder).  Anything else, including
 * no username at all, is refused with MOSQ_ERR_AUTH: mosquitto answers
 * CONNACK 0x87 "Not authorized" (MQTT 5) or 5 "not authorised" (3.1.1) and
 * logs the reason at notice level.  The listener's allow_anonymous does not
 * matter: this plugin never defers.
 *
 * Authorisation (MOSQ_EVT_ACL_CHECK), for read, write, subscribe and
 * unsubscribe alike, the platform's rule (sermas-api's /api/mqtt/acl):
 *   - the client's token must still be unexpired: exp is checked on every
 *     ACL check, so a long-lived connection whose token expires loses all
 *     topic access (it stays connected; reconnect with a fresh token);
 *   - a token with "superuser": true may use every topic (system/... too);
 *   - otherwise the topic must be app/<appId>/<resource>/<scope>[/...] or
 *     user/<appId>/<resource>/<scope>[/...] with <appId> the token's appId,
 *     and <resource> and <scope> named (non-empty, no wildcard): the
 *     platform grants <resource>:<scope> permissions, so app/myapp/# and
 *     app/myapp/+/messages are refused;
 *   - a token with a "permissions" claim (an array of "<resource>:<scope>")
 *     needs <resource>:<scope> in it; without the claim it has every
 *     permission of its app;
 *   - shared subscriptions ($share/<group>/<filter>) are refused, as the
 *     platform's check sees the prefix, unless plugin_opt_shared_subscriptions
 *     is true (a broker set up for them): then <filter> is judged;
 *   - everything else ($SYS, system/..., other apps) is refused.
 *
 * Per connection the plugin remembers the verified token's appId and exp,
 * keyed by the client pointer and checked against the client's current
 * username, and forgets them on MOSQ_EVT_DISCONNECT.  A check for a client it
 * has no (matching) entry for verifies the username again from scratch.
 *
 * mosquitto runs every plugin callback on its single main thread, so the
 * plugin state needs no locking.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

/* mosquitto_plugin.h uses mosquitto_plugin_id_t from mosquitto_broker.h */
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#if defined(__has_include)
#  if __has_include(<mosquitto.h>)
#    include <mosquitto.h>
#  endif
#endif
#ifndef LIBMOSQUITTO_MAJOR
/* Debian ships mosquitto.h in libmosquitto-dev, not in mosquitto-dev; these
 * values are part of the broker's plugin ABI (mosquitto.h of 2.0.x). */
enum {
    MOSQ_ERR_SUCCESS = 0,
    MOSQ_ERR_NOMEM = 1,
    MOSQ_ERR_INVAL = 3,
    MOSQ_ERR_AUTH = 11,
    MOSQ_ERR_ACL_DENIED = 12,
    MOSQ_ERR_UNKNOWN = 13,
    MOSQ_ERR_PLUGIN_DEFER = 17,
};
#define MOSQ_LOG_INFO (1 << 0)
#define MOSQ_LOG_NOTICE (1 << 1)
#define MOSQ_LOG_WARNING (1 << 2)
#define MOSQ_LOG_ERR (1 << 3)
#define MOSQ_LOG_DEBUG (1 << 4)
#endif

#define SB_NAME "sermas_jwt_auth"
#define SB_TOKEN_MAX 16384          /* longer usernames are not tokens we issue */
#define SB_APP_ID_MAX 256
#define SB_SECRET_MAX 65536
#define SB_MAC_LEN 32               /* HMAC-SHA256 */

/* ------------------------------------------------------------------ state */

/* What a verified token says. */
typedef struct {
    char *app_id;                   /* malloc'd */
    double exp;                     /* seconds since the epoch */
    char *perms;                    /* ",res:scope,res2:scope2," (malloc'd), NULL: every permission */
    int superuser;
} sb_claims;

static void
sb_claims_free(sb_claims *c)
{
    free(c->app_id);
    free(c->perms);
    c->app_id = NULL;
    c->perms = NULL;
}

/* One authenticated connection. */
typedef struct sb_conn {
    struct sb_conn *next;
    const struct mosquitto *client;
    char *username;                 /* the token the entry was verified from */
    sb_claims claims;
    int expiry_logged;
} sb_conn;

typedef struct {
    mosquitto_plugin_id_t *id;
    unsigned char *secret;
    size_t secret_len;
    sb_conn **buckets;              /* chained hash table keyed by client pointer */
    size_t nbuckets;                /* a power of two */
    size_t count;
    int shared_subscriptions;       /* plugin_opt_shared_subscriptions true */
} sb_plugin;

/* Why a token was refused. */
typedef enum {
    SB_OK = 0,
    SB_NOMEM,
    SB_NO_USERNAME,
    SB_TOO_LONG,
    SB_NOT_JWT,
    SB_BAD_HEADER,
    SB_BAD_ALG,
    SB_BAD_SIGNATURE,
    SB_BAD_CLAIMS,
    SB_BAD_APP_ID,
    SB_NO_EXP,
    SB_EXPIRED,
    SB_NOT_YET_VALID,
    SB_BAD_PERMISSIONS,
} sb_verdict;

static const char *
sb_verdict_text(sb_verdict v)
{
    switch (v) {
    case SB_OK: return "ok";
    case SB_NOMEM: return "out of memory";
    case SB_NO_USERNAME: return "no username (a JWT access token is required)";
    case SB_TOO_LONG: return "username too long to be an access token";
    case SB_NOT_JWT: return "username is not a JWT (header.claims.signature, base64url)";
    case SB_BAD_HEADER: return "JWT header is not a base64url-encoded JSON object";
    case SB_BAD_ALG: return "JWT alg is not HS256 (or the header has 'crit')";
    case SB_BAD_SIGNATURE: return "JWT signature does not verify with this broker's secret";
    case SB_BAD_CLAIMS: return "JWT claims are not a base64url-encoded JSON object";
    case SB_BAD_PERMISSIONS: return "JWT permissions claim is not an array of \"<resource>:<scope>\" strings";
    case SB_BAD_APP_ID: return "JWT has no usable appId claim (a non-empty string without / + #)";
    case SB_NO_EXP: return "JWT has no numeric exp claim";
    case SB_EXPIRED: return "JWT has expired";
    case SB_NOT_YET_VALID: return "JWT is not valid yet (nbf)";
    }
    return "unknown";
}

static double
sb_now(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (double)time(NULL);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --------------------------------------------------------------- base64url */

static int
sb_b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Bytes that len characters of unpadded base64url decode to, or -1 if no
 * string of that length is valid base64url. */
static long
sb_b64url_decoded_len(size_t len)
{
    if (len % 4 == 1 || len > SB_TOKEN_MAX)
        return -1;
    return (long)(len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0));
}

/* Decode unpadded base64url (RFC 4648 section 5, as JWS uses it) into out,
 * which has room for sb_b64url_decoded_len(len) + 1 bytes; NUL-terminates.
 * Refuses padding, any other character and non-zero trailing bits, so a
 * byte string has exactly one accepted encoding.  Returns the byte count or -1. */
static long
sb_b64url_decode(const char *s, size_t len, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t i, o = 0;

    if (sb_b64url_decoded_len(len) < 0)
        return -1;
    for (i = 0; i < len; i++) {
        int v = sb_b64url_value((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = ((acc << 6) | (uint32_t)v) & 0xFFFFFFu;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)((acc >> bits) & 0xFFu);
        }
    }
    if (bits > 0 && (acc & ((1u << bits) - 1u)) != 0)
        return -1;
    out[o] = '\0';
    return (long)o;
}

/* Parse a base64url segment that must hold a JSON object; NULL when it does
 * not, with *nomem set when memory ran out. */
static cJSON *
sb_parse_segment(const char *s, size_t len, int *nomem)
{
    long cap = sb_b64url_decoded_len(len);
    unsigned char *buf;
    const char *end = NULL;
    cJSON *json = NULL;
    long n;

    if (cap < 0)
        return NULL;
    buf = malloc((size_t)cap + 1);
    if (buf == NULL) {
        *nomem = 1;
        return NULL;
    }
    n = sb_b64url_decode(s, len, buf);
    /* an embedded NUL would hide the rest of the text from the parser */
    if (n > 0 && memchr(buf, '\0', (size_t)n) == NULL) {
        json = cJSON_ParseWithOpts((const char *)buf, &end, 1);
        if (json != NULL && !cJSON_IsObject(json)) {
            cJSON_Delete(json);
            json = NULL;
        }
        /* cJSON reports allocation failures as parse errors; tokens we
         * issue always parse, so treat those as invalid, not as nomem */
    }
    free(buf);
    return json;
}

/* ------------------------------------------------------------- verification */

/* "permissions": absent -> NULL (every permission of the app); an array of
 * "<resource>:<scope>" strings -> ",a:b,c:d,"; anything else is refused. */
static sb_verdict
sb_parse_permissions(const cJSON *item, char **out)
{
    const cJSON *p;
    size_t len = 2;
    char *w;

    *out = NULL;
    if (item == NULL)
        return SB_OK;
    if (!cJSON_IsArray(item))
        return SB_BAD_PERMISSIONS;
    cJSON_ArrayForEach(p, item) {
        const char *s = cJSON_IsString(p) ? p->valuestring : NULL;
        const char *colon = s != NULL ? strchr(s, ':') : NULL;
        if (colon == NULL || colon == s || colon[1] == '\0' || strpbrk(s, ",/+#") != NULL ||
            strlen(s) > SB_APP_ID_MAX)
            return SB_BAD_PERMISSIONS;
        len += strlen(s) + 1;
    }
    if ((*out = malloc(len)) == NULL)
        return SB_NOMEM;
    w = *out;
    *w++ = ',';
    cJSON_ArrayForEach(p, item) {
        size_t n = strlen(p->valuestring);
        memcpy(w, p->valuestring, n);
        w += n;
        *w++ = ',';
    }
    *w = '\0';
    return SB_OK;
}

static int
sb_app_id_ok(const char *app)
{
    size_t n = strlen(app);
    return n > 0 && n <= SB_APP_ID_MAX && strpbrk(app, "/+#") == NULL;
}

/* Verify token with the plugin's secret at time now; on SB_OK fill *out
 * (the caller frees out->app_id). */
static sb_verdict
sb_token_verify(const sb_plugin *pl, const char *token, double now, sb_claims *out)
{
    const char *dot1, *dot2;
    size_t len;
    cJSON *header = NULL, *claims = NULL;
    const cJSON *item;
    unsigned char sig[SB_MAC_LEN * 2 + 4];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    long sig_len;
    int nomem = 0;
    sb_verdict v;

    out->app_id = NULL;
    out->exp = 0.0;
    out->perms = NULL;
    out->superuser = 0;
    if (token == NULL || token[0] == '\0')
        return SB_NO_USERNAME;
    len = strnlen(token, SB_TOKEN_MAX + 1);
    if (len > SB_TOKEN_MAX)
        return SB_TOO_LONG;
    dot1 = memchr(token, '.', len);
    if (dot1 == NULL)
        return SB_NOT_JWT;
    dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
    /* an empty signature (alg "none") is reported by the alg check below */
    if (dot2 == NULL || dot1 == token || dot2 == dot1 + 1 ||
        memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL)
        return SB_NOT_JWT;

    /* header: {"alg":"HS256", ...}; refuse extensions we do not understand */
    header = sb_parse_segment(token, (size_t)(dot1 - token), &nomem);
    if (header == NULL) {
        v = nomem ? SB_NOMEM : SB_BAD_HEADER;
        goto done;
    }
    item = cJSON_GetObjectItemCaseSensitive(header, "alg");
    if (!cJSON_IsString(item) || strcmp(item->valuestring, "HS256") != 0 ||
        cJSON_GetObjectItemCaseSensitive(header, "crit") != NULL) {
        v = SB_BAD_ALG;
        goto done;
    }

    /* signature: HMAC-SHA256 over "header.claims", compared in constant time */
    if ((size_t)(token + len - (dot2 + 1)) > sizeof(sig) * 4 / 3) {
        v = SB_BAD_SIGNATURE;
        goto done;
    }
    sig_len = sb_b64url_decode(dot2 + 1, (size_t)(token + len - (dot2 + 1)), sig);
    if (sig_len < 0) {
        v = SB_NOT_JWT;
        goto done;
    }
    if (HMAC(EVP_sha256(), pl->secret, (int)pl->secret_len, (const unsigned char *)token,
             (size_t)(dot2 - token), mac, &mac_len) == NULL) {
        v = SB_NOMEM;
        goto done;
    }
    if (sig_len != SB_MAC_LEN || mac_len != SB_MAC_LEN || CRYPTO_memcmp(mac, sig, SB_MAC_LEN) != 0) {
        v = SB_BAD_SIGNATURE;
        goto done;
    }

    /* claims: only now, signed by our secret, are they worth reading */
    claims = sb_parse_segment(dot1 + 1, (size_t)(dot2 - dot1 - 1), &nomem);
    if (claims == NULL) {
        v = nomem ? SB_NOMEM : SB_BAD_CLAIMS;
        goto done;
    }
    item = cJSON_GetObjectItemCaseSensitive(claims, "exp");
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble)) {
        v = SB_NO_EXP;
        goto done;
    }
    if (item->valuedouble <= now) {
        v = SB_EXPIRED;
        goto done;
    }
    out->exp = item->valuedouble;
    item = cJSON_GetObjectItemCaseSensitive(claims, "nbf");
    if (item != NULL && (!cJSON_IsNumber(item) || !(item->valuedouble <= now))) {
        v = SB_NOT_YET_VALID;
        goto done;
    }
    item = cJSON_GetObjectItemCaseSensitive(claims, "appId");
    if (!cJSON_IsString(item) || !sb_app_id_ok(item->valuestring)) {
        v = SB_BAD_APP_ID;
        goto done;
    }
    out->app_id = strdup(item->valuestring);
    if (out->app_id == NULL) {
        v = SB_NOMEM;
        goto done;
    }
    item = cJSON_GetObjectItemCaseSensitive(claims, "superuser");
    out->superuser = cJSON_IsTrue(item);
    v = sb_parse_permissions(cJSON_GetObjectItemCaseSensitive(claims, "permissions"), &out->perms);

done:
    if (v != SB_OK)
        sb_claims_free(out);
    cJSON_Delete(header);           /* NULL-safe */
    cJSON_Delete(claims);
    OPENSSL_cleanse(mac, sizeof(mac));
    return v;
}

/* ------------------------------------------------------------ connections */

static size_t
sb_bucket(const sb_plugin *pl, const struct mosquitto *client)
{
    uint64_t h = (uint64_t)(uintptr_t)client;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return (size_t)h & (pl->nbuckets - 1);
}

static sb_conn *
sb_conn_find(const sb_plugin *pl, const struct mosquitto *client)
{
    sb_conn *c;
    for (c = pl->buckets[sb_bucket(pl, client)]; c != NULL; c = c->next)
        if (c->client == client)
            return c;
    return NULL;
}

static void
sb_conn_free(sb_conn *c)
{
    free(c->username);
    sb_claims_free(&c->claims);
    free(c);
}

static void
sb_conn_remove(sb_plugin *pl, const struct mosquitto *client)
{
    sb_conn **link = &pl->buckets[sb_bucket(pl, client)];
    while (*link != NULL) {
        if ((*link)->client == client) {
            sb_conn *dead = *link;
            *link = dead->next;
            sb_conn_free(dead);
            pl->count--;
            return;
        }
        link = &(*link)->next;
    }
}

/* Double the table; on allocation failure keep the old one (longer chains). */
static void
sb_conns_grow(sb_plugin *pl)
{
    size_t n = pl->nbuckets * 2, i;
    sb_conn **old = pl->buckets, **fresh = calloc(n, sizeof(*fresh));
    size_t old_n = pl->nbuckets;

    if (fresh == NULL)
        return;
    pl->buckets = fresh;
    pl->nbuckets = n;
    for (i = 0; i < old_n; i++) {
        sb_conn *c = old[i];
        while (c != NULL) {
            sb_conn *next = c->next;
            size_t b = sb_bucket(pl, c->client);
            c->next = fresh[b];
            fresh[b] = c;
            c = next;
        }
    }
    free(old);
}

/* Remember client's verified token; takes ownership of the claims' strings.
 * Returns 0, or -1 when out of memory (claims freed, nothing remembered). */
static int
sb_conn_put(sb_plugin *pl, const struct mosquitto *client, const char *username, sb_claims *claims)
{
    sb_conn *c = calloc(1, sizeof(*c));
    size_t b;

    if (c == NULL || (c->username = strdup(username)) == NULL) {
        free(c);
        sb_claims_free(claims);
        return -1;
    }
    c->client = client;
    c->claims = *claims;
    claims->app_id = NULL;
    claims->perms = NULL;
    sb_conn_remove(pl, client);     /* a re-used client pointer */
    if (pl->count >= pl->nbuckets)
        sb_conns_grow(pl);
    b = sb_bucket(pl, client);
    c->next = pl->buckets[b];
    pl->buckets[b] = c;
    pl->count++;
    return 0;
}

static void
sb_conns_clear(sb_plugin *pl)
{
    size_t i;
    for (i = 0; i < pl->nbuckets; i++) {
        sb_conn *c = pl->buckets[i];
        while (c != NULL) {
            sb_conn *next = c->next;
            sb_conn_free(c);
            c = next;
        }
        pl->buckets[i] = NULL;
    }
    pl->count = 0;
}

/* -------------------------------------------------------------- callbacks */

static const char *
sb_or(const char *s, const char *dflt)
{
    return s != NULL ? s : dflt;
}

static int
sb_on_basic_auth(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_basic_auth *ed = event_data;
    sb_plugin *pl = userdata;
    sb_claims claims;
    sb_verdict v;

    (void)event;
    v = sb_token_verify(pl, ed->username, sb_now(), &claims);
    if (v != SB_OK) {
        /* never log the token itself */
        mosquitto_log_printf(v == SB_NOMEM ? MOSQ_LOG_ERR : MOSQ_LOG_NOTICE,
                             SB_NAME ": refused client %s from %s: %s",
                             sb_or(mosquitto_client_id(ed->client), "?"),
                             sb_or(mosquitto_client_address(ed->client), "?"), sb_verdict_text(v));
        sb_conn_remove(pl, ed->client);
        return MOSQ_ERR_AUTH;
    }
    mosquitto_log_printf(MOSQ_LOG_INFO, SB_NAME ": client %s authenticated for app %s (token valid for %.0f s)",
                         sb_or(mosquitto_client_id(ed->client), "?"), claims.app_id, claims.exp - sb_now());
    if (sb_conn_put(pl, ed->client, ed->username, &claims) != 0)
        /* not fatal: ACL checks then verify the username each time */
        mosquitto_log_printf(MOSQ_LOG_WARNING, SB_NAME ": out of memory caching client %s",
                             sb_or(mosquitto_client_id(ed->client), "?"));
    return MOSQ_ERR_SUCCESS;
}

static const char *
sb_access_name(int access)
{
    switch (access) {
    case MOSQ_ACL_READ: return "read";
    case MOSQ_ACL_WRITE: return "write";
    case MOSQ_ACL_SUBSCRIBE: return "subscribe";
    case MOSQ_ACL_UNSUBSCRIBE: return "unsubscribe";
    default: return "access";
    }
}

/* Is the level starting at p (up to '/' or the end) named: non-empty and
 * not a wildcard?  Its length in *len. */
static int
sb_named_level(const char *p, size_t *len)
{
    *len = strcspn(p, "/");
    return *len > 0 && !(*len == 1 && (p[0] == '+' || p[0] == '#'));
}

/* Does the token grant "<resource>:<scope>" (res and scope of the given lengths)? */
static int
sb_has_permission(const sb_claims *claims, const char *res, size_t res_len, const char *scope,
                  size_t scope_len)
{
    const char *p;
    if (claims->perms == NULL)
        return 1;                   /* no claim: every permission of the app */
    for (p = claims->perms; (p = strchr(p, ',')) != NULL && p[1] != '\0'; p++) {
        if (strncmp(p + 1, res, res_len) == 0 && p[1 + res_len] == ':' &&
            strncmp(p + 2 + res_len, scope, scope_len) == 0 && p[2 + res_len + scope_len] == ',')
            return 1;
    }
    return 0;
}

/* May a token use topic (a topic name, or a filter for (un)subscribe)?
 * shared: whether $share/<group>/ filters are accepted at all. */
static int
sb_topic_allowed(const char *topic, int access, const sb_claims *claims, int shared)
{
    const char *p = topic, *res, *scope;
    size_t app_len = strlen(claims->app_id), res_len, scope_len;

    if (claims->superuser)
        return 1;
    if ((access == MOSQ_ACL_SUBSCRIBE || access == MOSQ_ACL_UNSUBSCRIBE) &&
        strncmp(p, "$share/", 7) == 0) {
        const char *slash = strchr(p + 7, '/');
        if (!shared || slash == NULL || slash == p + 7)
            return 0;
        p = slash + 1;
    }
    if (strncmp(p, "app/", 4) == 0)
        p += 4;
    else if (strncmp(p, "user/", 5) == 0)
        p += 5;
    else
        return 0;
    /* the appId level must be the token's appId itself, never a wildcard
     * (appIds cannot contain + or #, see sb_app_id_ok) */
    if (strncmp(p, claims->app_id, app_len) != 0 || p[app_len] != '/')
        return 0;
    res = p + app_len + 1;
    if (!sb_named_level(res, &res_len) || res[res_len] != '/')
        return 0;
    scope = res + res_len + 1;
    if (!sb_named_level(scope, &scope_len))
        return 0;
    return sb_has_permission(claims, res, res_len, scope, scope_len);
}

static int
sb_on_acl_check(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_acl_check *ed = event_data;
    sb_plugin *pl = userdata;
    const char *username = mosquitto_client_username(ed->client);
    sb_conn *c;
    sb_claims fresh = {NULL, 0.0, NULL, 0};
    const sb_claims *claims;
    double now = sb_now();
    int rc = MOSQ_ERR_ACL_DENIED;

    (void)event;
    if (username == NULL || ed->topic == NULL)
        return MOSQ_ERR_ACL_DENIED;
    c = sb_conn_find(pl, ed->client);
    if (c != NULL && strcmp(c->username, username) == 0) {
        claims = &c->claims;
    }
    else {
        /* not seen at connect (a retained-message source check, a will after
         * the disconnect event, a session taken over): verify from scratch */
        sb_verdict v = sb_token_verify(pl, username, now, &fresh);
        if (v != SB_OK) {
            mosquitto_log_printf(MOSQ_LOG_DEBUG, SB_NAME ": denied %s '%s' to client %s: %s",
                                 sb_access_name(ed->access), ed->topic,
                                 sb_or(mosquitto_client_id(ed->client), "?"), sb_verdict_text(v));
            return v == SB_NOMEM ? MOSQ_ERR_NOMEM : MOSQ_ERR_ACL_DENIED;
        }
        claims = &fresh;
    }

    if (claims->exp <= now) {
        /* the token expired while connected: no more topic access */
        if (c == NULL || !c->expiry_logged) {
            mosquitto_log_printf(MOSQ_LOG_NOTICE, SB_NAME ": token of client %s (app %s) has expired; "
                                 "denying all topic access until it reconnects with a fresh token",
                                 sb_or(mosquitto_client_id(ed->client), "?"), claims->app_id);
            if (c != NULL)
                c->expiry_logged = 1;
        }
        goto done;
    }
    if (sb_topic_allowed(ed->topic, ed->access, claims, pl->shared_subscriptions))
        rc = MOSQ_ERR_SUCCESS;
    else
        mosquitto_log_printf(MOSQ_LOG_DEBUG, SB_NAME ": denied %s '%s' to client %s of app %s",
                             sb_access_name(ed->access), ed->topic,
                             sb_or(mosquitto_client_id(ed->client), "?"), claims->app_id);
done:
    sb_claims_free(&fresh);
    return rc;
}

static int
sb_on_disconnect(int event, void *event_data, void *userdata)
{
    struct mosquitto_evt_disconnect *ed = event_data;
    (void)event;
    sb_conn_remove(userdata, ed->client);
    return MOSQ_ERR_SUCCESS;
}

/* ----------------------------------------------------------- plugin entry */

/* Read the whole secret file into pl->secret. */
static int
sb_read_secret(sb_plugin *pl, const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = MOSQ_ERR_INVAL;

    if (f == NULL) {
        mosquitto_log_printf(MOSQ_LOG_ERR, SB_NAME ": cannot open secret_file %s", path);
        return MOSQ_ERR_INVAL;
    }
    for (;;) {
        size_t got;
        if (n == cap) {
            /* grow by copying, so that no stale copy of the key is left in
             * freed memory (realloc would not wipe it) */
            size_t bigger_cap = cap == 0 ? 256 : cap * 2;
            unsigned char *bigger;
            if (bigger_cap > SB_SECRET_MAX + 1)
                bigger_cap = SB_SECRET_MAX + 1;
            if (bigger_cap == cap) {
                mosquitto_log_printf(MOSQ_LOG_ERR, SB_NAME ": secret_file %s is larger than %d bytes",
                                     path, SB_SECRET_MAX);
                goto done;
            }
            bigger = malloc(bigger_cap);
            if (bigger == NULL) {
                rc = MOSQ_ERR_NOMEM;
                goto done;
            }
            if (buf != NULL) {
                memcpy(bigger, buf, n);
                OPENSSL_cleanse(buf, cap);
                free(buf);
            }
            buf = bigger;
            cap = bigger_cap;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                mosquitto_log_printf(MOSQ_LOG_ERR, SB_NAME ": cannot read secret_file %s", path);
                goto done;
            }
            break;
        }
    }
    if (n == 0) {
        mosquitto_log_printf(MOSQ_LOG_ERR, SB_NAME ": secret_file %s is empty", path);
        goto done;
    }
    pl->secret = buf;
    pl->secret_len = n;
    buf = NULL;
    rc = MOSQ_ERR_SUCCESS;
done:
    if (buf != NULL) {
        OPENSSL_cleanse(buf, cap);
        free(buf);
    }
    fclose(f);
    return rc;
}

static void
sb_plugin_free(sb_plugin *pl)
{
    if (pl == NULL)
        return;
    if (pl->buckets != NULL) {
        sb_conns_clear(pl);
        free(pl->buckets);
    }
    if (pl->secret != NULL) {
        OPENSSL_cleanse(pl->secret, pl->secret_len);
        free(pl->secret);
    }
    free(pl);
}

int
mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
    int i;
    for (i = 0; i < supported_version_count; i++)
        if (supported_versions[i] == 5)
            return 5;
    return -1;
}

int
mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                      struct mosquitto_opt *options, int option_count)
{
    sb_plugin *pl;
    const char *secret_file = NULL;
    int i, rc, shared = 0;

    for (i = 0; i < option_count; i++) {
        if (strcmp(options[i].key, "secret_file") == 0) {
            secret_file = options[i].value;
        }
        else if (strcmp(options[i].key, "shared_subscriptions") == 0 &&
                 (strcmp(options[i].value, "true") == 0 || strcmp(options[i].value, "false") == 0)) {
            shared = strcmp(options[i].value, "true") == 0;
        }
        else {
            mosquitto_log_printf(MOSQ_LOG_ERR, SB_NAME ": unknown option plugin_opt_%s or bad value "
                                 "(known: plugin_opt_secret_file <path>, plugin_opt_shared_subscriptions "
                                 "true|false)", options[i].key);
            return MOSQ_ERR_INVAL;
        }
    }
    if (secret_file == NULL || secret_file[0] == '\0') {
        mosquitto_log_printf(MOSQ_LOG_ERR, SB_NAME ": plugin_opt_secret_file is required "
                             "(a file holding the HS256 secret)");
        return MOSQ_ERR_INVAL;
    }

    pl = calloc(1, sizeof(*pl));
    if (pl == NULL)
        return MOSQ_ERR_NOMEM;
    pl->id = identifier;
    pl->shared_subscriptions = shared;
    pl->nbuckets = 64;
    pl->buckets = calloc(pl->nbuckets, sizeof(*pl->buckets));
    if (pl->buckets == NULL) {
        rc = MOSQ_ERR_NOMEM;
        goto fail;
    }
    rc = sb_read_secret(pl, secret_file);
    if (rc != MOSQ_ERR_SUCCESS)
        goto fail;

    rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, sb_on_basic_auth, NULL, pl);
    if (rc != MOSQ_ERR_SUCCESS)
        goto fail;
    rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, sb_on_acl_check, NULL, pl);
    if (rc != MOSQ_ERR_SUCCESS)
        goto fail_basic;
    rc = mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, sb_on_disconnect, NULL, pl);
    if (rc != MOSQ_ERR_SUCCESS)
        goto fail_acl;

    *userdata = pl;
    mosquitto_log_printf(MOSQ_LOG_INFO, SB_NAME ": HS256 JWT authentication and app/<appId> ACL enabled");
    return MOSQ_ERR_SUCCESS;

fail_acl:
    mosquitto_callback_unregister(identifier, MOSQ_EVT_ACL_CHECK, sb_on_acl_check, NULL);
fail_basic:
    mosquitto_callback_unregister(identifier, MOSQ_EVT_BASIC_AUTH, sb_on_basic_auth, NULL);
fail:
    mosquitto_log_printf(MOSQ_LOG_ERR, SB_NAME ": initialisation failed (error %d)", rc);
    sb_plugin_free(pl);
    return rc;
}

int
mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
    sb_plugin *pl = userdata;
    (void)options;
    (void)option_count;
    if (pl == NULL)
        return MOSQ_ERR_SUCCESS;
    /* the library is unloaded after this returns: leave no callback behind */
    mosquitto_callback_unregister(pl->id, MOSQ_EVT_BASIC_AUTH, sb_on_basic_auth, NULL);
    mosquitto_callback_unregister(pl->id, MOSQ_EVT_ACL_CHECK, sb_on_acl_check, NULL);
    mosquitto_callback_unregister(pl->id, MOSQ_EVT_DISCONNECT, sb_on_disconnect, NULL);
    sb_plugin_free(pl);
    return MOSQ_ERR_SUCCESS;
}
