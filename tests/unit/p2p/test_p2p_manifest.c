/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_p2p_manifest.c - the P2P manifest and peer-record codecs: round trips, the layout of
 * chunks over files, the strict decoder's rejections, allocation failures, and the embedded
 * publish/fetch/stat/rm path on one host (kv_p2p_* with embedded:// metadata).
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "kvstash/kvstash.h"
#include "p2p/p2p_int.h"

/* Builds a manifest of three files (sizes 10000, 0, 4096*3+1) with 4 KiB chunks. */
static void sample(struct kv_p2p_manifest *m)
{
    memset(m, 0, sizeof(*m));
    m->name = kv_strdup("model-1.0");
    m->chunk_size = 4096;
    m->nfiles = 3;
    m->files = kv_calloc(3, sizeof(*m->files));
    m->files[0].path = kv_strdup("a.bin");
    m->files[0].size = 10000;
    m->files[1].path = kv_strdup("empty");
    m->files[1].size = 0;
    m->files[2].path = kv_strdup("dir/b.bin");
    m->files[2].size = 4096 * 3 + 1;
    assert_int_equal(kv_p2p_manifest_layout(m), KV_OK);
    m->sums = kv_calloc(m->nchunks, sizeof(uint64_t));
    for (uint64_t i = 0; i < m->nchunks; i++)
        m->sums[i] = 0x0123456789abcdefULL * (i + 1);
}

static void test_layout(void **state)
{
    (void)state;
    struct kv_p2p_manifest m;
    sample(&m);
    assert_int_equal(m.nchunks, 3 + 0 + 4);
    assert_int_equal(m.size, 10000 + 4096 * 3 + 1);
    assert_int_equal(m.files[2].first_chunk, 3);
    size_t fi;
    uint64_t off, len;
    kv_p2p_chunk_locate(&m, 2, &fi, &off, &len);
    assert_int_equal(fi, 0);
    assert_int_equal(off, 8192);
    assert_int_equal(len, 10000 - 8192);
    kv_p2p_chunk_locate(&m, 3, &fi, &off, &len); /* skips the empty file */
    assert_int_equal(fi, 2);
    assert_int_equal(off, 0);
    assert_int_equal(len, 4096);
    kv_p2p_chunk_locate(&m, 6, &fi, &off, &len);
    assert_int_equal(fi, 2);
    assert_int_equal(off, 3 * 4096);
    assert_int_equal(len, 1);
    kv_p2p_manifest_fini(&m);
}

static void test_roundtrip(void **state)
{
    (void)state;
    struct kv_p2p_manifest m, d;
    sample(&m);
    char *txt;
    size_t len;
    assert_int_equal(kv_p2p_manifest_encode(&m, &txt, &len), KV_OK);
    char err[256] = "";
    assert_int_equal(kv_p2p_manifest_decode(txt, len, &d, err, sizeof(err)), KV_OK);
    assert_true(kv_p2p_manifest_equal(&m, &d));
    assert_string_equal(d.name, "model-1.0");
    assert_string_equal(d.files[2].path, "dir/b.bin");
    assert_int_equal(d.sums[6], m.sums[6]);
    d.sums[6] ^= 1;
    assert_false(kv_p2p_manifest_equal(&m, &d));
    kv_free(txt);
    kv_p2p_manifest_fini(&d);
    kv_p2p_manifest_fini(&m);
}

static void expect_bad(const char *json, const char *mention)
{
    struct kv_p2p_manifest d;
    char err[256] = "";
    int rc = kv_p2p_manifest_decode(json, strlen(json), &d, err, sizeof(err));
    if (rc == KV_OK) {
        kv_p2p_manifest_fini(&d);
        fail_msg("accepted: %s", json);
    }
    assert_int_equal(rc, KV_EPROTO);
    if (!strstr(err, mention))
        fail_msg("error '%s' does not mention '%s' for %s", err, mention, json);
}

#define H "\"0000000000000001\""
static void test_decode_rejects(void **state)
{
    (void)state;
    /* the valid base: one file of 5000 bytes, 4096-byte chunks -> 2 chunks */
    const char *ok = "{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":5000,"
                     "\"files\":[{\"path\":\"f\",\"size\":5000}],\"chunks\":[" H "," H "]}";
    struct kv_p2p_manifest d;
    char err[256];
    assert_int_equal(kv_p2p_manifest_decode(ok, strlen(ok), &d, err, sizeof(err)), KV_OK);
    kv_p2p_manifest_fini(&d);

    expect_bad("[]", "not a JSON object");
    expect_bad("{\"version\":1", "line");
    expect_bad("{\"version\":2,\"name\":\"n\",\"chunk_size\":4096,\"size\":0,\"files\":[],"
               "\"chunks\":[]}",
               "version");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":0,\"files\":[],"
               "\"chunks\":[],\"extra\":1}",
               "unknown field 'extra'");
    expect_bad("{\"version\":1,\"name\":\"../x\",\"chunk_size\":4096,\"size\":0,\"files\":[],"
               "\"chunks\":[]}",
               "name");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":100,\"size\":0,\"files\":[],"
               "\"chunks\":[]}",
               "chunk_size");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":5000,"
               "\"files\":[{\"path\":\"../etc/passwd\",\"size\":5000}],\"chunks\":[" H "," H "]}",
               "path");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":5000,"
               "\"files\":[{\"path\":\"/abs\",\"size\":5000}],\"chunks\":[" H "," H "]}",
               "path");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":5000,"
               "\"files\":[{\"path\":\"a//b\",\"size\":5000}],\"chunks\":[" H "," H "]}",
               "path");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":2,"
               "\"files\":[{\"path\":\"a\",\"size\":1},{\"path\":\"a\",\"size\":1}],"
               "\"chunks\":[" H "," H "]}",
               "clashes");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":2,"
               "\"files\":[{\"path\":\"a\",\"size\":1},{\"path\":\"a/b\",\"size\":1}],"
               "\"chunks\":[" H "," H "]}",
               "clashes");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":5001,"
               "\"files\":[{\"path\":\"f\",\"size\":5000}],\"chunks\":[" H "," H "]}",
               "sum of file sizes");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":5000,"
               "\"files\":[{\"path\":\"f\",\"size\":5000}],\"chunks\":[" H "]}",
               "checksums");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":5000,"
               "\"files\":[{\"path\":\"f\",\"size\":5000}],\"chunks\":[" H ",\"XYZ\"]}",
               "hex");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":5000,"
               "\"files\":[{\"path\":\"f\",\"size\":-5}],\"chunks\":[]}",
               "size");
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":0,"
               "\"files\":[{\"path\":\"f\",\"size\":0,\"mode\":7}],\"chunks\":[]}",
               "unknown field 'mode'");
    /* 2^40 bytes in 4 KiB chunks is more chunks than allowed */
    expect_bad("{\"version\":1,\"name\":\"n\",\"chunk_size\":4096,\"size\":1099511627776,"
               "\"files\":[{\"path\":\"f\",\"size\":1099511627776}],\"chunks\":[]}",
               "too many chunks");
}

static void test_paths_names(void **state)
{
    (void)state;
    assert_true(kv_p2p_path_ok("a"));
    assert_true(kv_p2p_path_ok("a/b/c.bin"));
    assert_true(kv_p2p_path_ok("..a"));
    assert_false(kv_p2p_path_ok(""));
    assert_false(kv_p2p_path_ok("a/"));
    assert_false(kv_p2p_path_ok("./a"));
    assert_false(kv_p2p_path_ok("a/../b"));
    assert_false(kv_p2p_path_ok("a\nb"));
    assert_true(kv_p2p_name_ok("llama-3.1_8B"));
    assert_false(kv_p2p_name_ok(".hidden"));
    assert_false(kv_p2p_name_ok("a/b"));
    assert_false(kv_p2p_name_ok(""));
    char big[KV_P2P_NAME_MAX + 2];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_false(kv_p2p_name_ok(big));
    big[KV_P2P_NAME_MAX] = '\0';
    assert_true(kv_p2p_name_ok(big));
}

static void test_peer_roundtrip(void **state)
{
    (void)state;
    uint8_t have[2] = {0x05, 0x01}, claims[2] = {0x02, 0x00};
    char *segs[2] = {"p2p.n.peer.0", ""};
    struct kv_p2p_peer p = {
        .publisher = true, .nsegs = 2, .segs = segs, .have = have, .claims = claims, .nchunks = 9};
    memcpy(p.id, "peer-1", 7);
    char *txt;
    size_t len;
    assert_int_equal(kv_p2p_peer_encode(&p, &txt, &len), KV_OK);
    struct kv_p2p_peer d;
    char err[256];
    assert_int_equal(kv_p2p_peer_decode(txt, len, 9, 2, &d, err, sizeof(err)), KV_OK);
    assert_string_equal(d.id, "peer-1");
    assert_true(d.publisher);
    assert_string_equal(d.segs[0], "p2p.n.peer.0");
    assert_string_equal(d.segs[1], "");
    assert_true(kv_p2p_bit(d.have, 0) && !kv_p2p_bit(d.have, 1) && kv_p2p_bit(d.have, 2));
    assert_true(kv_p2p_bit(d.have, 8));
    assert_true(kv_p2p_bit(d.claims, 1));
    kv_p2p_peer_fini(&d);
    /* a record for another layout is rejected */
    assert_int_equal(kv_p2p_peer_decode(txt, len, 17, 2, &d, err, sizeof(err)), KV_EPROTO);
    assert_int_equal(kv_p2p_peer_decode(txt, len, 9, 3, &d, err, sizeof(err)), KV_EPROTO);
    kv_free(txt);
    const char *bad = "{\"peer\":\"x\",\"publisher\":1,\"segs\":[],\"have\":\"\",\"claims\":\"\"}";
    assert_int_equal(kv_p2p_peer_decode(bad, strlen(bad), 0, 0, &d, err, sizeof(err)), KV_EPROTO);
}

static void test_alloc_failures(void **state)
{
    (void)state;
    struct kv_p2p_manifest m;
    sample(&m);
    char *txt;
    size_t len;
    assert_int_equal(kv_p2p_manifest_encode(&m, &txt, &len), KV_OK);
    for (long n = 1; n < 200; n++) {
        struct kv_p2p_manifest d;
        char err[256];
        kv_alloc_fail_at(n);
        int rc = kv_p2p_manifest_decode(txt, len, &d, err, sizeof(err));
        kv_alloc_fail_at(0);
        if (rc == KV_OK) {
            assert_true(kv_p2p_manifest_equal(&m, &d));
            kv_p2p_manifest_fini(&d);
        } else {
            assert_true(rc == KV_ENOMEM || rc == KV_EPROTO); /* jansson's own OOM */
        }
        char *t2 = NULL;
        size_t l2;
        kv_alloc_fail_at(n);
        rc = kv_p2p_manifest_encode(&m, &t2, &l2);
        kv_alloc_fail_at(0);
        if (rc == KV_OK)
            kv_free(t2);
        else
            assert_int_equal(rc, KV_ENOMEM);
    }
    kv_free(txt);
    kv_p2p_manifest_fini(&m);
}

/* publish + fetch + stat + rm in one process with embedded metadata */
static void test_embedded_end_to_end(void **state)
{
    (void)state;
    char dir[] = "/tmp/kvstash-p2p-unit.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char src[300], dest[300], path[400];
    snprintf(src, sizeof(src), "%s/src", dir);
    snprintf(dest, sizeof(dest), "%s/dest", dir);
    assert_int_equal(mkdir(src, 0755), 0);
    uint8_t *buf = kv_malloc(300000);
    for (size_t i = 0; i < 300000; i++)
        buf[i] = (uint8_t)(i * 7 + i / 251);
    snprintf(path, sizeof(path), "%s/x.bin", src);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, 300000, f), 300000);
    fclose(f);

    struct kv_p2p_opts o = {.metadata = "embedded://p2p-unit", .lease_ttl_s = 2};
    struct kv_p2p *pub, *fet;
    assert_int_equal(kv_p2p_open(&o, &pub), KV_OK);
    const char *paths[] = {src};
    assert_int_equal(kv_p2p_publish(pub, "unit", paths, 1, 65536), KV_OK);
    assert_int_equal(kv_p2p_open(&o, &fet), KV_OK);
    struct kv_p2p_fetch_result r;
    assert_int_equal(kv_p2p_fetch(fet, "unit", dest, NULL, NULL, &r), KV_OK);
    assert_int_equal(r.size_bytes, 300000);
    assert_int_equal(r.chunks, 5);
    assert_int_equal(r.from_publisher, 300000);
    snprintf(path, sizeof(path), "%s/x.bin", dest);
    FILE *g = fopen(path, "rb");
    assert_non_null(g);
    uint8_t *got = kv_malloc(300001);
    assert_int_equal(fread(got, 1, 300001, g), 300000);
    fclose(g);
    assert_memory_equal(got, buf, 300000);

    struct kv_p2p_stat st;
    assert_int_equal(kv_p2p_stat(pub, "unit", &st), KV_OK);
    assert_int_equal(st.size_bytes, 300000);
    assert_int_equal(st.holders, 2);
    assert_int_equal(st.complete_holders, 2);
    assert_int_equal(st.publisher_uploaded_bytes, 300000);
    /* both the publisher's file and the complete fetcher's are mapped read-only: a rogue WRITE
     * fails and the bytes are intact */
    struct kv_meta *meta;
    assert_int_equal(kv_meta_open("embedded://p2p-unit", NULL, &meta), KV_OK);
    struct kv_meta_kv *kvs;
    size_t nk;
    assert_int_equal(kv_meta_list(meta, "/kvstash/default/p2p/unit/peers/", &kvs, &nk), KV_OK);
    assert_int_equal(nk, 2);
    struct kv_xfer *rogue;
    struct kv_xfer_opts xo = {.protocol = "tcp", .timeout_ms = 2000};
    assert_int_equal(kv_xfer_create(meta, &xo, &rogue), KV_OK);
    int publishers = 0;
    for (size_t i = 0; i < nk; i++) {
        struct kv_p2p_peer rec;
        char err[256];
        assert_int_equal(kv_p2p_peer_decode(kvs[i].val, kvs[i].len, 5, 1, &rec, err, sizeof(err)),
                         KV_OK);
        publishers += rec.publisher;
        kv_target_id t;
        assert_int_equal(kv_xfer_open(rogue, rec.segs[0], &t), KV_OK);
        uint8_t junk[4096];
        memset(junk, 0xee, sizeof(junk));
        assert_true(kv_xfer_write(rogue, t, 0, junk, sizeof(junk)) < 0);
        uint8_t back[4096];
        assert_int_equal(kv_xfer_read(rogue, t, 0, back, sizeof(back)), KV_OK);
        assert_memory_equal(back, buf, sizeof(back));
        kv_p2p_peer_fini(&rec);
    }
    assert_int_equal(publishers, 1);
    kv_meta_kvs_free(kvs, nk);
    kv_xfer_destroy(rogue);
    kv_meta_close(meta);
    kv_p2p_close(fet);

    /* resume: a second fetch into the same dest reuses every chunk */
    assert_int_equal(kv_p2p_open(&o, &fet), KV_OK);
    assert_int_equal(kv_p2p_fetch(fet, "unit", dest, NULL, NULL, &r), KV_OK);
    assert_int_equal(r.reused_chunks, 5);
    assert_int_equal(r.from_publisher, 0);
    kv_p2p_close(fet);

    char **names;
    size_t n;
    assert_int_equal(kv_p2p_list(pub, &names, &n), KV_OK);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "unit");
    kv_p2p_names_free(names, n);
    assert_int_equal(kv_p2p_remove(pub, "unit"), KV_OK);
    assert_int_equal(kv_p2p_stat(pub, "unit", &st), KV_ENOENT);
    assert_int_equal(kv_p2p_remove(pub, "unit"), KV_ENOENT);
    kv_p2p_close(pub);
    kv_free(got);
    kv_free(buf);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* a holder that serves wrong bytes: its chunks fail verification, it is excluded, and the
 * fetch completes correctly from the publisher */
static void test_bad_holder(void **state)
{
    (void)state;
    char dir[] = "/tmp/kvstash-p2p-unit.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char src[300], dest[300], path[400];
    snprintf(src, sizeof(src), "%s/y.bin", dir);
    snprintf(dest, sizeof(dest), "%s/dest", dir);
    uint8_t *buf = kv_malloc(300000);
    for (size_t i = 0; i < 300000; i++)
        buf[i] = (uint8_t)(i * 13 + 1);
    FILE *f = fopen(src, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, 300000, f), 300000);
    fclose(f);

    struct kv_p2p_opts o = {.metadata = "embedded://p2p-unit2", .lease_ttl_s = 2};
    struct kv_p2p *pub, *fet;
    assert_int_equal(kv_p2p_open(&o, &pub), KV_OK);
    const char *paths[] = {src};
    assert_int_equal(kv_p2p_publish(pub, "unit2", paths, 1, 65536), KV_OK);

    /* the liar: a segment of garbage announced as holding all 5 chunks */
    struct kv_meta *meta;
    assert_int_equal(kv_meta_open("embedded://p2p-unit2", NULL, &meta), KV_OK);
    struct kv_xfer *evil;
    assert_int_equal(kv_xfer_create(meta, NULL, &evil), KV_OK);
    void *mem;
    kv_seg_id seg;
    assert_int_equal(kv_xfer_segment_alloc(evil, "evil.seg", 300000, &mem, &seg), KV_OK);
    memset(mem, 0xaa, 300000);
    const char *rec = "{\"peer\":\"evil\",\"publisher\":false,\"segs\":[\"evil.seg\"],"
                      "\"have\":\"1f\",\"claims\":\"00\"}";
    assert_int_equal(
        kv_meta_put(meta, "/kvstash/default/p2p/unit2/peers/evil", rec, strlen(rec), 0), KV_OK);

    assert_int_equal(kv_p2p_open(&o, &fet), KV_OK);
    struct kv_p2p_fetch_result r;
    assert_int_equal(kv_p2p_fetch(fet, "unit2", dest, NULL, NULL, &r), KV_OK);
    assert_true(r.checksum_errors >= 1);
    assert_int_equal(r.from_peers, 0);
    assert_int_equal(r.from_publisher, 300000);
    snprintf(path, sizeof(path), "%s/y.bin", dest);
    FILE *g = fopen(path, "rb");
    assert_non_null(g);
    uint8_t *got = kv_malloc(300001);
    assert_int_equal(fread(got, 1, 300001, g), 300000);
    fclose(g);
    assert_memory_equal(got, buf, 300000);
    kv_p2p_close(fet);
    kv_p2p_close(pub);
    kv_xfer_destroy(evil);
    kv_meta_close(meta);
    kv_free(got);
    kv_free(buf);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    kv_log_set_level(KV_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_decode_rejects),
        cmocka_unit_test(test_paths_names),
        cmocka_unit_test(test_peer_roundtrip),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_embedded_end_to_end),
        cmocka_unit_test(test_bad_holder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
