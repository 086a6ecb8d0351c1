#include "common/utf8.h"

#include <string.h>

#include "common/xalloc.h"

size_t utf8_seq_len(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    unsigned c = s[0], cp, min;
    size_t n;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0; /* continuation byte, 0xc0/0xc1 (always overlong) or 0xf5.. */
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

char *utf8_lossy(const char *s)
{
    char *out = xstrdup(s);
    for (size_t i = 0; out[i] != '\0';) {
        size_t n = utf8_seq_len(out + i);
        if (n == 0) {
            out[i++] = '?';
        } else {
            i += n;
        }
    }
    return out;
}
