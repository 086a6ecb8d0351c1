#include <strings.h>

#include <openssl/obj_mac.h>

#include "qwick/hash.h"

static const struct {
    qk_hash_alg alg;
    const char *name;
    const char *alt;
    size_t size;
    int nid;
} algs[] = {
    {QK_HASH_SHA1, "sha1", "sha-1", 20, NID_sha1},
    {QK_HASH_SHA256, "sha256", "sha-256", 32, NID_sha256},
    {QK_HASH_SHA384, "sha384", "sha-384", 48, NID_sha384},
    {QK_HASH_SHA512, "sha512", "sha-512", 64, NID_sha512},
};

#define NALGS (sizeof(algs) / sizeof(algs[0]))

qk_hash_alg qk_hash_from_name(const char *name)
{
    if (name == NULL)
        return QK_HASH_NONE;
    for (size_t i = 0; i < NALGS; i++)
        if (strcasecmp(name, algs[i].name) == 0 || strcasecmp(name, algs[i].alt) == 0)
            return algs[i].alg;
    return QK_HASH_NONE;
}

const char *qk_hash_name(qk_hash_alg alg)
{
    for (size_t i = 0; i < NALGS; i++)
        if (algs[i].alg == alg)
            return algs[i].name;
    return "unknown";
}

size_t qk_hash_size(qk_hash_alg alg)
{
    for (size_t i = 0; i < NALGS; i++)
        if (algs[i].alg == alg)
            return algs[i].size;
    return 0;
}

int qk_hash_nid(qk_hash_alg alg)
{
    for (size_t i = 0; i < NALGS; i++)
        if (algs[i].alg == alg)
            return algs[i].nid;
    return 0;
}

qk_hash_alg qk_hash_from_nid(int nid)
{
    for (size_t i = 0; i < NALGS; i++)
        if (algs[i].nid == nid)
            return algs[i].alg;
    return QK_HASH_NONE;
}
