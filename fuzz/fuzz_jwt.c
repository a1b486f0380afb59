/*
 * fuzz_jwt.c - libFuzzer harness for the LocalBus plugin's input handling
 * (plugin/sermas_jwt_auth.c): what a client controls is the MQTT username
 * (the JWT) and the topics it names.
 *
 * The first input byte picks the target, the rest is its input:
 *   0  the username as it comes: sb_token_verify on arbitrary bytes;
 *   1  a correctly signed token around fuzzed header and claims (split at the
 *      first 0x00), so the JSON, exp/nbf, appId and permissions parsing is
 *      reached past the signature check;
 *   2  the topic rule: "<permissions>\0<topic>" against app "myapp", all
 *      four access kinds, shared subscriptions on and off, superuser off.
 * Built by `make fuzz` with clang -fsanitize=fuzzer,address,undefined.
 */
#include "../plugin/sermas_jwt_auth.c"
#include "../tests/plugin_stubs.h"

#include <stddef.h>

static const unsigned char SECRET[] = "fuzz-secret";
static const double NOW = 1800000000.0;

static char *
b64url(const unsigned char *in, size_t len)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = malloc(len * 4 / 3 + 4), *w = out;
    size_t i;
    if (out == NULL)
        return NULL;
    for (i = 0; i + 2 < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        *w++ = alphabet[v >> 18 & 63]; *w++ = alphabet[v >> 12 & 63];
        *w++ = alphabet[v >> 6 & 63]; *w++ = alphabet[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        *w++ = alphabet[v >> 18 & 63]; *w++ = alphabet[v >> 12 & 63];
    }
    else if (len - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        *w++ = alphabet[v >> 18 & 63]; *w++ = alphabet[v >> 12 & 63]; *w++ = alphabet[v >> 6 & 63];
    }
    *w = '\0';
    return out;
}

static void
verify(const char *token)
{
    sb_plugin pl;
    sb_claims claims;
    memset(&pl, 0, sizeof pl);
    pl.secret = (unsigned char *)SECRET;
    pl.secret_len = sizeof SECRET - 1;
    if (sb_token_verify(&pl, token, NOW, &claims) == SB_OK)
        sb_claims_free(&claims);
}

static void
signed_token(const unsigned char *data, size_t size)
{
    const unsigned char *sep = memchr(data, 0, size);
    size_t hlen = sep ? (size_t)(sep - data) : 0;
    const unsigned char *claims = sep ? sep + 1 : data;
    size_t clen = sep ? size - hlen - 1 : size;
    char *h = sep ? b64url(data, hlen) : strdup("eyJhbGciOiJIUzI1NiJ9");
    char *c = b64url(claims, clen), *signing = NULL, *sig = NULL, *token = NULL;
    unsigned char mac[32];
    unsigned int mac_len = 0;
    if (h == NULL || c == NULL)
        goto out;
    signing = malloc(strlen(h) + strlen(c) + 2);
    if (signing == NULL)
        goto out;
    sprintf(signing, "%s.%s", h, c);
    HMAC(EVP_sha256(), SECRET, (int)(sizeof SECRET - 1), (unsigned char *)signing, strlen(signing), mac, &mac_len);
    sig = b64url(mac, mac_len);
    if (sig == NULL)
        goto out;
    token = malloc(strlen(signing) + strlen(sig) + 2);
    if (token == NULL)
        goto out;
    sprintf(token, "%s.%s", signing, sig);
    verify(token);
out:
    free(h); free(c); free(signing); free(sig); free(token);
}

static void
topic_rule(const unsigned char *data, size_t size)
{
    char *copy = malloc(size + 1), *topic;
    sb_claims claims = {"myapp", NOW + 60, NULL, 0};
    int access, shared;
    if (copy == NULL)
        return;
    memcpy(copy, data, size);
    copy[size] = '\0';
    topic = memchr(copy, 0, size) ? copy + strlen(copy) + 1 : copy;
    if (topic != copy)
        claims.perms = copy;        /* ",a:b," form, or anything */
    for (access = 1; access <= 8; access <<= 1)
        for (shared = 0; shared <= 1; shared++)
            (void)sb_topic_allowed(topic, access, &claims, shared);
    free(copy);
}

int
LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    char *text;
    if (size < 1 || size > SB_TOKEN_MAX + 64)
        return 0;
    switch (data[0] % 3) {
    case 0:
        if ((text = malloc(size)) == NULL)
            return 0;
        memcpy(text, data + 1, size - 1);
        text[size - 1] = '\0';
        verify(text);
        free(text);
        break;
    case 1:
        signed_token(data + 1, size - 1);
        break;
    default:
        topic_rule(data + 1, size - 1);
        break;
    }
    return 0;
}
