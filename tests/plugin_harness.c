/*
 * Test harness for plugin/sermas_jwt_auth.c without a broker: includes the
 * plugin's source (to reach its static functions), stubs the few broker
 * functions it calls, and answers commands read from stdin, one per line:
 *
 *   V <secret-hex> <now> <token>   verify token ("-" for none)
 *                                  -> "OK <appId> <exp>" or "ERR <verdict> <text>"
 *   T <access> <appId> <perms|-> <superuser> <shared> <topic>
 *                                  topic rule -> "1" or "0"
 *   S <secret-file>                life cycle: init, many clients authenticating,
 *                                  ACL checks, disconnects, cleanup -> "OK ..." or "FAIL ..."
 *   I <key> <value>                plugin init with one option -> the return code
 *
 * tests/test_jwt_plugin_unit.py builds it with AddressSanitizer/UBSan.
 */
#include "../plugin/sermas_jwt_auth.c"

#include "plugin_stubs.h"

/* ---------------------------------------------------------------- commands */
static int
hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static void
cmd_verify(char *args)
{
    char *secret_hex = strtok(args, " ");
    char *now_s = strtok(NULL, " ");
    char *token = strtok(NULL, "");
    sb_plugin pl;
    sb_claims claims;
    sb_verdict v;
    size_t i, n;

    memset(&pl, 0, sizeof(pl));
    if (secret_hex == NULL || now_s == NULL || token == NULL) {
        printf("BAD COMMAND\n");
        return;
    }
    n = strlen(secret_hex) / 2;
    pl.secret = malloc(n ? n : 1);
    for (i = 0; i < n; i++)
        pl.secret[i] = (unsigned char)(hex_value(secret_hex[2 * i]) * 16 + hex_value(secret_hex[2 * i + 1]));
    pl.secret_len = n;
    v = sb_token_verify(&pl, strcmp(token, "-") == 0 ? NULL : token, strtod(now_s, NULL), &claims);
    if (v == SB_OK)
        printf("OK %s %.3f %s %d\n", claims.app_id, claims.exp, claims.perms ? claims.perms : "-",
               claims.superuser);
    else
        printf("ERR %d %s\n", (int)v, sb_verdict_text(v));
    sb_claims_free(&claims);
    free(pl.secret);
}

/* T <access> <app> <perms|-> <superuser 0|1> <shared 0|1> <topic> */
static void
cmd_topic(char *args)
{
    char *access = strtok(args, " ");
    char *app = strtok(NULL, " ");
    char *perms = strtok(NULL, " ");
    char *super = strtok(NULL, " ");
    char *shared = strtok(NULL, " ");
    char *topic = strtok(NULL, "");
    sb_claims claims;
    if (access == NULL || app == NULL || perms == NULL || super == NULL || shared == NULL || topic == NULL) {
        printf("BAD COMMAND\n");
        return;
    }
    claims.app_id = app;
    claims.exp = 0;
    claims.perms = strcmp(perms, "-") == 0 ? NULL : perms;
    claims.superuser = atoi(super);
    printf("%d\n", sb_topic_allowed(topic, atoi(access), &claims, atoi(shared)));
}

static char *
make_token(const sb_plugin *pl, const char *app, double exp)
{
    /* an HS256 JWT built here, independently of the Python side */
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char json[256], *out;
    const char *header = "eyJhbGciOiJIUzI1NiJ9";           /* {"alg":"HS256"} */
    unsigned char mac[32];
    unsigned int mac_len;
    size_t len, i, o;
    uint32_t acc = 0;
    int bits = 0;

    snprintf(json, sizeof(json), "{\"appId\":\"%s\",\"exp\":%.3f}", app, exp);
    len = strlen(json);
    out = malloc(strlen(header) + 1 + len * 2 + 1 + 64);
    if (out == NULL)
        return NULL;
    o = (size_t)sprintf(out, "%s.", header);
    for (i = 0; i < len; i++) {
        acc = (acc << 8) | (unsigned char)json[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = alphabet[(acc >> bits) & 63];
        }
    }
    if (bits > 0)
        out[o++] = alphabet[(acc << (6 - bits)) & 63];
    HMAC(EVP_sha256(), pl->secret, (int)pl->secret_len, (unsigned char *)out, o, mac, &mac_len);
    out[o++] = '.';
    acc = 0;
    bits = 0;
    for (i = 0; i < mac_len; i++) {
        acc = (acc << 8) | mac[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = alphabet[(acc >> bits) & 63];
        }
    }
    if (bits > 0)
        out[o++] = alphabet[(acc << (6 - bits)) & 63];
    out[o] = '\0';
    return out;
}

#define FAIL(...) do { printf("FAIL "); printf(__VA_ARGS__); printf("\n"); goto out; } while (0)

static void
cmd_lifecycle(char *secret_file)
{
    struct mosquitto_opt opt = {"secret_file", secret_file};
    void *userdata = NULL;
    sb_plugin *pl;
    char *tokens[FAKE_CLIENTS] = {0};
    char *stale = NULL;
    int i, rc, allowed = 0;
    double now = sb_now();

    rc = mosquitto_plugin_init((mosquitto_plugin_id_t *)fake_clients, &userdata, &opt, 1);
    if (rc != MOSQ_ERR_SUCCESS)
        FAIL("init returned %d", rc);
    if (registered != 3)
        FAIL("%d callbacks registered", registered);
    pl = userdata;

    /* every client authenticates: odd ones with a token that expires at once */
    for (i = 0; i < FAKE_CLIENTS; i++) {
        struct mosquitto_evt_basic_auth auth;
        memset(&auth, 0, sizeof(auth));
        tokens[i] = make_token(pl, i % 3 ? "app1" : "app2", i % 2 ? now + 0.5 : now + 600);
        if (tokens[i] == NULL)
            FAIL("out of memory");
        fake_usernames[i] = tokens[i];
        auth.client = (struct mosquitto *)&fake_clients[i];
        auth.username = tokens[i];
        if (sb_on_basic_auth(MOSQ_EVT_BASIC_AUTH, &auth, pl) != MOSQ_ERR_SUCCESS)
            FAIL("client %d refused", i);
    }
    if (pl->count != FAKE_CLIENTS || pl->nbuckets < FAKE_CLIENTS)
        FAIL("%zu entries in %zu buckets", pl->count, pl->nbuckets);

    /* a refused re-authentication forgets the client */
    {
        struct mosquitto_evt_basic_auth auth;
        memset(&auth, 0, sizeof(auth));
        auth.client = (struct mosquitto *)&fake_clients[0];
        auth.username = "garbage";
        if (sb_on_basic_auth(MOSQ_EVT_BASIC_AUTH, &auth, pl) != MOSQ_ERR_AUTH)
            FAIL("garbage accepted");
        if (sb_conn_find(pl, auth.client) != NULL)
            FAIL("refused client still cached");
    }

    /* ACL checks, from the cache (and from scratch for client 0) */
    for (i = 0; i < FAKE_CLIENTS; i++) {
        struct mosquitto_evt_acl_check acl;
        memset(&acl, 0, sizeof(acl));
        acl.client = (struct mosquitto *)&fake_clients[i];
        acl.access = MOSQ_ACL_WRITE;
        acl.topic = i % 3 ? "app/app1/x/y" : "app/app2/x/y";
        if (sb_on_acl_check(MOSQ_EVT_ACL_CHECK, &acl, pl) == MOSQ_ERR_SUCCESS)
            allowed++;
        acl.topic = i % 3 ? "app/app2/x/y" : "app/app1/x/y";
        if (sb_on_acl_check(MOSQ_EVT_ACL_CHECK, &acl, pl) != MOSQ_ERR_ACL_DENIED)
            FAIL("client %d may use another app", i);
    }
    if (allowed != FAKE_CLIENTS)
        FAIL("%d of %d own-app checks allowed", allowed, FAKE_CLIENTS);

    /* a client whose username changed (session take-over, re-used pointer)
     * is verified from scratch, not served from the stale entry */
    stale = make_token(pl, "app3", now + 600);
    if (stale == NULL)
        FAIL("out of memory");
    fake_usernames[2] = stale;
    {
        struct mosquitto_evt_acl_check acl;
        memset(&acl, 0, sizeof(acl));
        acl.client = (struct mosquitto *)&fake_clients[2];
        acl.access = MOSQ_ACL_READ;
        acl.topic = "app/app3/a/b";
        if (sb_on_acl_check(MOSQ_EVT_ACL_CHECK, &acl, pl) != MOSQ_ERR_SUCCESS)
            FAIL("changed username not re-verified");
        acl.topic = "app/app1/a/b";
        if (sb_on_acl_check(MOSQ_EVT_ACL_CHECK, &acl, pl) != MOSQ_ERR_ACL_DENIED)
            FAIL("stale entry used");
    }
    fake_usernames[2] = tokens[2];

    /* after the short tokens expired, their clients lose access */
    {
        struct timespec ts = {0, 600 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    allowed = 0;
    for (i = 0; i < FAKE_CLIENTS; i++) {
        struct mosquitto_evt_acl_check acl;
        memset(&acl, 0, sizeof(acl));
        acl.client = (struct mosquitto *)&fake_clients[i];
        acl.access = MOSQ_ACL_READ;
        acl.topic = i % 3 ? "app/app1/x/y" : "app/app2/x/y";
        if (sb_on_acl_check(MOSQ_EVT_ACL_CHECK, &acl, pl) == MOSQ_ERR_SUCCESS)
            allowed++;
        else if (i % 2 == 0)
            FAIL("client %d with a valid token denied", i);
    }
    if (allowed != (FAKE_CLIENTS + 1) / 2)
        FAIL("%d allowed after expiry", allowed);

    /* half of the clients disconnect; the rest are freed by cleanup */
    for (i = 0; i < FAKE_CLIENTS; i += 2) {
        struct mosquitto_evt_disconnect dis;
        memset(&dis, 0, sizeof(dis));
        dis.client = (struct mosquitto *)&fake_clients[i];
        sb_on_disconnect(MOSQ_EVT_DISCONNECT, &dis, pl);
    }
    if (pl->count != FAKE_CLIENTS / 2)
        FAIL("%zu entries left after disconnects", pl->count);
    rc = mosquitto_plugin_cleanup(userdata, &opt, 1);
    userdata = NULL;
    if (rc != MOSQ_ERR_SUCCESS || registered != 0)
        FAIL("cleanup returned %d, %d callbacks left", rc, registered);
    printf("OK\n");
out:
    if (userdata != NULL)
        mosquitto_plugin_cleanup(userdata, &opt, 1);
    for (i = 0; i < FAKE_CLIENTS; i++)
        free(tokens[i]);
    free(stale);
}

static void
cmd_init(char *args)
{
    char *key = strtok(args, " ");
    char *value = strtok(NULL, "");
    struct mosquitto_opt opt = {key, value ? value : ""};
    void *userdata = NULL;
    int rc = mosquitto_plugin_init((mosquitto_plugin_id_t *)fake_clients, &userdata, &opt, key ? 1 : 0);
    printf("%d %d\n", rc, registered);
    if (rc == MOSQ_ERR_SUCCESS)
        mosquitto_plugin_cleanup(userdata, &opt, 1);
}

int
main(void)
{
    static char line[1 << 16];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof(line), stdin) != NULL) {
        size_t n = strlen(line);
        if (n > 0 && line[n - 1] == '\n')
            line[--n] = '\0';
        if (n < 2)
            continue;
        switch (line[0]) {
        case 'V': cmd_verify(line + 2); break;
        case 'T': cmd_topic(line + 2); break;
        case 'S': cmd_lifecycle(line + 2); break;
        case 'I': cmd_init(line + 2); break;
        default: printf("BAD COMMAND\n");
        }
    }
    return 0;
}
