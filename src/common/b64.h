/* Strict base64 (RFC 4648 §4, standard alphabet, '=' padding required) for
 * JSON fields. Strict on purpose: a digest has exactly one valid spelling, so
 * whitespace, missing padding, non-zero pad bits and the URL-safe alphabet are
 * rejected instead of being guessed at. */
#ifndef QWICKD_B64_H
#define QWICKD_B64_H

#include <stddef.h>
#include <stdint.h>

/* Size of the encoding of n bytes, including the terminating NUL. */
#define B64_ENCODED_SIZE(n) ((((n) + 2) / 3) * 4 + 1)

/* Encodes n bytes into out (B64_ENCODED_SIZE(n) bytes), NUL-terminated.
 * Returns the length written (without the NUL). */
size_t b64_encode(const uint8_t *in, size_t n, char *out);
/* Decodes len characters into out (at most outcap bytes). Returns 0 and sets
 * *outlen, or -1 when the text is not canonical base64 or does not fit. */
int b64_decode(const char *in, size_t len, uint8_t *out, size_t outcap, size_t *outlen);

#endif
