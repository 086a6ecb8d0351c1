#include "common/b64.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t b64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int sextet(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int b64_decode(const char *in, size_t len, uint8_t *out, size_t outcap, size_t *outlen)
{
    *outlen = 0;
    if (len % 4 != 0)
        return -1;
    size_t pad = 0;
    if (len >= 4 && in[len - 1] == '=')
        pad = in[len - 2] == '=' ? 2 : 1;
    size_t need = len / 4 * 3 - pad;
    if (need > outcap)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int last = i + 4 == len;
        int s[4];
        for (size_t k = 0; k < 4; k++) {
            /* '=' is only allowed as the final one or two characters. */
            if (last && in[i + k] == '=' && k >= 4 - pad) {
                s[k] = 0;
                continue;
            }
            s[k] = sextet((unsigned char)in[i + k]);
            if (s[k] < 0)
                return -1;
        }
        uint32_t v =
            (uint32_t)s[0] << 18 | (uint32_t)s[1] << 12 | (uint32_t)s[2] << 6 | (uint32_t)s[3];
        out[o++] = (uint8_t)(v >> 16);
        if (!(last && pad == 2))
            out[o++] = (uint8_t)(v >> 8);
        if (!(last && pad >= 1))
            out[o++] = (uint8_t)v;
        /* Canonical form: the bits the padding hides must be zero. */
        if (last && pad == 2 && (v & 0xffff) != 0)
            return -1;
        if (last && pad == 1 && (v & 0xff) != 0)
            return -1;
    }
    *outlen = o;
    return 0;
}
