/* SPDX-License-Identifier: Apache-2.0 */
/*
 * replay_main.c - runs a fuzz target's LLVMFuzzerTestOneInput over every file of the given
 * corpus directories (or files), so CI replays corpora without libFuzzer. Fails if a directory
 * is empty, so a lost corpus cannot pass silently.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/alloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = kv_malloc((size_t)(n > 0 ? n : 1));
    size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    if (!buf || got != (size_t)n) {
        kv_free(buf);
        return -1;
    }
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    kv_free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    size_t total = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (run_file(argv[i]) != 0)
                return 1;
            total++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        struct dirent *de;
        size_t here = 0;
        while (d && (de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], de->d_name);
            if (run_file(path) != 0)
                return 1;
            here++;
        }
        if (d)
            closedir(d);
        if (here == 0) {
            fprintf(stderr, "%s: empty corpus\n", argv[i]);
            return 1;
        }
        total += here;
    }
    printf("replayed %zu inputs\n", total);
    return 0;
}
