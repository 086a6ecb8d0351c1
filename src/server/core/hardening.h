/* Key hygiene of the qwickd process and of the files it trusts.
 *
 * harden_process (main.c, before any command runs): the process is made
 * non-dumpable (PR_SET_DUMPABLE 0: no core file, and other processes of the
 * same user can neither ptrace it nor read its /proc/PID/mem or environ), its
 * core size limit is set to 0 (also for anything it execs), and OpenSSL's
 * secure heap is set up (CRYPTO_secure_malloc_init, HARDEN_SECURE_HEAP bytes):
 * OpenSSL allocates the private components of every key it parses or generates
 * there (RSA d, p, q, CRT values; EC private scalars), in memory that is
 * mlock'd, excluded from core dumps (MADV_DONTDUMP), guarded and wiped on free.
 *
 * harden_check_dir / harden_check_private (serve's start-up): a data directory
 * or a private file that group or others can reach is refused with the path,
 * its mode and the fix named. */
#ifndef QWICKD_HARDENING_H
#define QWICKD_HARDENING_H

#include "qwick/error.h"

/* 4 MiB: the signer cache holds up to 1024 keys (api_sign.c), an RSA-3072 or
 * RSA-4096 key takes about 2.3 KiB of the heap with its Montgomery values, and
 * each signature in progress takes a few hundred bytes of temporaries. When
 * the heap is full, parsing one more key fails (the request gets an error). */
#define HARDEN_SECURE_HEAP (4u << 20)
#define HARDEN_SECURE_MIN 64

/* Non-dumpable, no core files, secure heap. QK_ERR_IO when the process could
 * not be made non-dumpable or its core limit could not be lowered; a secure
 * heap that OpenSSL could not set up at all is QK_ERR_NOMEM. Idempotent. */
qk_err harden_process(void);

/* The state as the kernel and OpenSSL report it now (serve logs it). */
typedef struct harden_state {
    int dumpable;       /* PR_GET_DUMPABLE: 0 after harden_process */
    unsigned long core; /* RLIMIT_CORE soft limit in bytes: 0 after harden_process */
    int secure_heap;    /* 0 none, 1 locked, 2 working but not locked (RLIMIT_MEMLOCK) */
    size_t secure_used; /* bytes of it in use */
} harden_state;
void harden_status(harden_state *out);

/* The data directory (or what a link there points to): a directory with no
 * permission for group or others (`qwickd init` makes it 0700). */
qk_err harden_check_dir(const char *dir);
/* A private file (database, TLS key): a regular file nobody but its owner may
 * read or write (0600 or stricter). `what` names it in the message. A missing
 * file is not this check's business (QK_OK): whoever opens it says so. */
qk_err harden_check_private(const char *path, const char *what);

#endif
