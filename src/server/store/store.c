/* Backend-independent parts of the store interface: names and destructors. */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "store/store.h"
#include "core/util.h"

static const char *const role_names[] = {"viewer", "signer", "admin"};

const char *store_role_name(store_role r)
{
    if ((unsigned)r >= sizeof(role_names) / sizeof(role_names[0]))
        return "unknown";
    return role_names[r];
}

int store_role_parse(const char *s, store_role *out)
{
    for (size_t i = 0; i < sizeof(role_names) / sizeof(role_names[0]); i++)
        if (s != NULL && strcmp(s, role_names[i]) == 0) {
            *out = (store_role)i;
            return 0;
        }
    return -1;
}

const char *req_status_name(req_status s)
{
    switch (s) {
    case REQ_QUEUED:
        return "QUEUED";
    case REQ_PENDING_APPROVAL:
        return "PENDING_APPROVAL";
    case REQ_PROCESSING:
        return "PROCESSING";
    case REQ_SIGNED:
        return "SIGNED";
    case REQ_FAILED:
        return "FAILED";
    case REQ_REJECTED:
        return "REJECTED";
    case REQ_CANCELLED:
        return "CANCELLED";
    }
    return "UNKNOWN";
}

int req_status_parse(const char *s, req_status *out)
{
    for (int i = 0; s != NULL && i < REQ__COUNT; i++)
        if (strcmp(s, req_status_name((req_status)i)) == 0) {
            *out = (req_status)i;
            return 0;
        }
    return -1;
}

const char *audit_outcome_name(audit_outcome o)
{
    switch (o) {
    case AUDIT_ALLOWED:
        return "allowed";
    case AUDIT_DENIED:
        return "denied";
    case AUDIT_FAILED:
        return "failed";
    }
    return "unknown";
}

void store_new_request_id(char out[40])
{
    uint8_t rnd[16];
    randombytes_buf(rnd, sizeof(rnd));
    memcpy(out, "req_", 4);
    hex_encode(rnd, sizeof(rnd), out + 4);
}

int store_request_id_ok(const char *id)
{
    return id != NULL && strncmp(id, "req_", 4) == 0 && strlen(id) == 36 &&
           strspn(id + 4, "0123456789abcdef") == 32;
}

void store_org_clear(store_org *o)
{
    if (o == NULL)
        return;
    free(o->name);
    memset(o, 0, sizeof(*o));
}

void store_apikey_clear(store_apikey *k)
{
    if (k == NULL)
        return;
    free(k->name);
    free(k->prefix);
    free(k->profiles);
    memset(k, 0, sizeof(*k));
}

void store_apikey_list_free(store_apikey *keys, size_t n)
{
    if (keys == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        store_apikey_clear(&keys[i]);
    free(keys);
}

void store_profile_clear(store_profile *p)
{
    if (p == NULL)
        return;
    free(p->name);
    free(p->backend);
    free(p->config);
    free(p->policy);
    qk_buf_free(&p->chain_der);
    memset(p, 0, sizeof(*p));
}

void store_signing_key_clear(store_signing_key *k)
{
    if (k == NULL)
        return;
    free(k->kind);
    qk_buf_free(&k->sealed);
    memset(k, 0, sizeof(*k));
}

void store_signing_key_list_free(store_signing_key *k, size_t n)
{
    for (size_t i = 0; k != NULL && i < n; i++)
        store_signing_key_clear(&k[i]);
    free(k);
}

void store_names_free(char **names, size_t n)
{
    for (size_t i = 0; names != NULL && i < n; i++)
        free(names[i]);
    free(names);
}

void store_sign_request_clear(store_sign_request *r)
{
    if (r == NULL)
        return;
    free(r->algorithm);
    free(r->format);
    free(r->profile);
    free(r->filename);
    free(r->description);
    free(r->url);
    free(r->client_ip);
    qk_buf_free(&r->digest);
    qk_buf_free(&r->signature);
    qk_buf_free(&r->chain_der);
    free(r->callback_url);
    free(r->error);
    memset(r, 0, sizeof(*r));
}

void store_sign_request_list_free(store_sign_request *r, size_t n)
{
    for (size_t i = 0; r != NULL && i < n; i++)
        store_sign_request_clear(&r[i]);
    free(r);
}

void store_profile_list_free(store_profile *p, size_t n)
{
    for (size_t i = 0; p != NULL && i < n; i++)
        store_profile_clear(&p[i]);
    free(p);
}

void store_lease_list_free(store_lease *l, size_t n)
{
    for (size_t i = 0; l != NULL && i < n; i++) {
        free(l[i].node);
        free(l[i].key_id);
    }
    free(l);
}

void store_org_list_free(store_org *o, size_t n)
{
    for (size_t i = 0; o != NULL && i < n; i++)
        store_org_clear(&o[i]);
    free(o);
}

void store_checkpoint_clear(store_checkpoint *c)
{
    free(c->note);
    memset(c, 0, sizeof(*c));
}

void store_log_entries_free(store_log_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        qk_buf_free(&e[i].leaf);
    free(e);
}

void store_operator_token_list_free(store_operator_token *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(t[i].name);
    free(t);
}

void store_usage_clear(store_usage *u)
{
    for (size_t i = 0; i < u->nprofiles; i++)
        free(u->by_profile[i].profile);
    free(u->by_profile);
    memset(u, 0, sizeof(*u));
}
