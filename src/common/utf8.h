/* UTF-8 checking, shared by the qwick CLI and qwickd. */
#ifndef QWICK_COMMON_UTF8_H
#define QWICK_COMMON_UTF8_H

#include <stddef.h>

/* Length (1-4) of the well-formed UTF-8 sequence at s, or 0: a stray
 * continuation byte, a truncated sequence, an overlong form, a surrogate or a
 * code point above U+10FFFF (RFC 3629; what JSON libraries accept). s is
 * NUL-terminated; the NUL ends a sequence early, it is never read past. */
size_t utf8_seq_len(const char *s);

/* A copy of s with every byte that is not part of a well-formed sequence
 * replaced by '?' (same length): a file name from a non-UTF-8 locale made
 * fit for JSON metadata. Aborts on out of memory. */
char *utf8_lossy(const char *s);

#endif
