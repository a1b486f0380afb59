/*
 * plugin_stubs.h - the few mosquitto broker functions sermas_jwt_auth.c calls,
 * stubbed for running the plugin without a broker.  Included (after the
 * plugin's source) by tests/plugin_harness.c and fuzz/fuzz_jwt.c.
 */
#include <stdarg.h>

/* ------------------------------------------------------------ broker stubs */
#define FAKE_CLIENTS 3000
static char fake_clients[FAKE_CLIENTS];            /* their addresses are the clients */
static const char *fake_usernames[FAKE_CLIENTS];
static int registered;

static int
fake_index(const struct mosquitto *client)
{
    return (int)((const char *)client - fake_clients);
}

int
mosquitto_callback_register(mosquitto_plugin_id_t *identifier, int event,
                            MOSQ_FUNC_generic_callback cb_func, const void *event_data, void *userdata)
{
    (void)identifier; (void)event; (void)cb_func; (void)event_data; (void)userdata;
    registered++;
    return MOSQ_ERR_SUCCESS;
}

int
mosquitto_callback_unregister(mosquitto_plugin_id_t *identifier, int event,
                              MOSQ_FUNC_generic_callback cb_func, const void *event_data)
{
    (void)identifier; (void)event; (void)cb_func; (void)event_data;
    registered--;
    return MOSQ_ERR_SUCCESS;
}

void
mosquitto_log_printf(int level, const char *fmt, ...)
{
    va_list ap;
    char buf[1024];
    (void)level;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);      /* formats every argument: catches bad ones */
    va_end(ap);
}

const char *
mosquitto_client_id(const struct mosquitto *client)
{
    (void)client;
    return "fake";
}

const char *
mosquitto_client_address(const struct mosquitto *client)
{
    (void)client;
    return "127.0.0.1";
}

const char *
mosquitto_client_username(const struct mosquitto *client)
{
    return fake_usernames[fake_index(client)];
}

