/* seedgen OUTDIR: writes the synthetic edge-case seeds of corpus/fuzz_pe
 * (built with tests/unit/pe_builder.c). Run by make-corpus.sh; not part of
 * the build. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pe_builder.h"

static const char *outdir;

static void save(const char *name, const uint8_t *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", outdir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

static void build_save(const char *name, const pb_spec *s)
{
    pb_image img;
    pb_build(s, &img);
    save(name, img.data, img.len);
    pb_free(&img);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: seedgen OUTDIR\n");
        return 2;
    }
    outdir = argv[1];
    uint8_t der[3][200];
    pb_fake_der(der[0], 90, 1);
    pb_fake_der(der[1], 161, 2);
    pb_fake_der(der[2], 45, 3);

    pb_spec s = {.pe32plus = 0, .nsections = 0};
    build_save("syn-min-pe32", &s);
    s.pe32plus = 1;
    build_save("syn-min-pe32plus", &s);
    s = (pb_spec){.pe32plus = 1, .nsections = 3, .section_raw = 0x10, .overlay = 5};
    build_save("syn-odd-length", &s);
    s = (pb_spec){.pe32plus = 0, .nsections = 1, .section_raw = 0x10, .nrva = 5};
    build_save("syn-nrva5", &s);

    pb_bytes t = {0};
    for (int i = 0; i < 3; i++)
        pb_cert_entry(&t, der[i], i == 0 ? 90 : i == 1 ? 161 : 45, i < 2);
    s = (pb_spec){.pe32plus = 1,
                  .nsections = 2,
                  .section_raw = 0x10,
                  .cert_table = t.data,
                  .cert_table_len = t.len};
    build_save("syn-three-entries-last-unpadded", &s);
    s.pe32plus = 0;
    s.cert_unaligned = 1;
    s.overlay = 3;
    build_save("syn-unaligned-table", &s);
    pb_bytes_free(&t);

    for (int i = 0; i < 64; i++)
        pb_cert_entry(&t, der[2], 8, 1);
    s = (pb_spec){.pe32plus = 1,
                  .nsections = 1,
                  .section_raw = 0x10,
                  .cert_table = t.data,
                  .cert_table_len = t.len};
    build_save("syn-64-entries", &s);
    pb_bytes_free(&t);

    pb_cert_entry(&t, der[0], 90, 0);
    pb_append(&t, "\0\0\0\0\0", 5);
    s = (pb_spec){.pe32plus = 0,
                  .nsections = 2,
                  .section_raw = 0x10,
                  .cert_table = t.data,
                  .cert_table_len = t.len};
    build_save("syn-zero-tail", &s);
    pb_bytes_free(&t);

    static const uint8_t mz[] = {'M', 'Z'};
    save("edge-mz-only", mz, sizeof(mz));
    uint8_t dos[64] = {'M', 'Z'};
    dos[0x3c] = 0x40;
    save("edge-dos-header-only", dos, sizeof(dos));
    return 0;
}
