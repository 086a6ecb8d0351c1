/* Process and file hygiene for key material (see hardening.h). */
#include <errno.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "core/hardening.h"

/* What CRYPTO_secure_malloc_init said: 1 locked, 2 not locked. */
static int secure_heap_result;

qk_err harden_process(void)
{
    struct rlimit none = {0, 0};

    if (setrlimit(RLIMIT_CORE, &none) != 0)
        return qk_fail(QK_ERR_IO, "setrlimit(RLIMIT_CORE, 0): %s", strerror(errno));
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return qk_fail(QK_ERR_IO, "prctl(PR_SET_DUMPABLE, 0): %s", strerror(errno));
    if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0)
        return qk_fail(QK_ERR_IO, "the process is still dumpable");
    if (CRYPTO_secure_malloc_initialized())
        return QK_OK;
    secure_heap_result = CRYPTO_secure_malloc_init(HARDEN_SECURE_HEAP, HARDEN_SECURE_MIN);
    if (secure_heap_result == 0)
        return qk_fail_ossl(QK_ERR_NOMEM, "OpenSSL secure heap of %u bytes", HARDEN_SECURE_HEAP);
    return QK_OK;
}

void harden_status(harden_state *out)
{
    struct rlimit rl;
    out->dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    out->core = getrlimit(RLIMIT_CORE, &rl) == 0 ? (unsigned long)rl.rlim_cur : ~0ul;
    out->secure_heap = CRYPTO_secure_malloc_initialized() ? secure_heap_result : 0;
    out->secure_used = CRYPTO_secure_used();
}

qk_err harden_check_dir(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        return qk_fail(QK_ERR_IO, "data directory %s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return qk_fail(QK_ERR_IO, "data directory %s is not a directory", dir);
    if ((st.st_mode & 077) != 0)
        return qk_fail(QK_ERR_IO,
                       "data directory %s has mode %04o: group or others can reach the keys and "
                       "the database (want 0700: chmod 700 %s)",
                       dir, (unsigned)(st.st_mode & 07777), dir);
    return QK_OK;
}

qk_err harden_check_private(const char *path, const char *what)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT)
            return QK_OK;
        return qk_fail(QK_ERR_IO, "%s %s: %s", what, path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode))
        return qk_fail(QK_ERR_IO, "%s %s is not a regular file", what, path);
    if ((st.st_mode & 077) != 0)
        return qk_fail(QK_ERR_IO,
                       "%s %s has mode %04o: group or others can read or change it (want 0600: "
                       "chmod 600 %s)",
                       what, path, (unsigned)(st.st_mode & 07777), path);
    return QK_OK;
}
