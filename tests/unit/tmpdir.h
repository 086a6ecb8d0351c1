/* Temporary directories for unit tests that need files (server store, keyring). */
#ifndef QK_TEST_TMPDIR_H
#define QK_TEST_TMPDIR_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* mkdtemp under $TMPDIR (or /tmp); the result is heap memory. */
static inline char *tmpdir_new(void)
{
    const char *base = getenv("TMPDIR");
    char *p = NULL;
    if (base == NULL || base[0] == '\0')
        base = "/tmp";
    if (asprintf(&p, "%s/qwick-test-XXXXXX", base) < 0)
        abort();
    if (mkdtemp(p) == NULL)
        abort();
    return p;
}

static inline int tmpdir_rm_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    return remove(path);
}

/* rm -rf and free. */
static inline void tmpdir_free(char *p)
{
    if (p == NULL)
        return;
    nftw(p, tmpdir_rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(p);
}

#endif
