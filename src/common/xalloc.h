/* Aborting allocators shared by the qwick CLI and qwickd (not libqwick, which
 * propagates QK_ERR_NOMEM). Out of memory prints "<program>: out of memory"
 * and aborts: neither program can do anything useful without memory. */
#ifndef QWICK_COMMON_XALLOC_H
#define QWICK_COMMON_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
/* The first n bytes of s (fewer when s is shorter), NUL-terminated. */
char *xstrndup(const char *s, size_t n);
/* xstrdup that maps NULL to NULL. */
char *xstrdup_null(const char *s);
/* printf into a fresh heap string. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
