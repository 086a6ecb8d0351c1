/* Lowercase hex, shared by the qwick CLI and qwickd. */
#ifndef QWICK_COMMON_HEX_H
#define QWICK_COMMON_HEX_H

#include <stddef.h>
#include <stdint.h>

/* Lowercase hex of n bytes into out (2n+1 bytes, NUL-terminated). */
void hex_encode(const uint8_t *p, size_t n, char *out);

#endif
