/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_prefault.c - the store's chunk-readying thread (prefault.c): no thread without a user, a
 * posted job runs once on another thread and kv_prefault_wait waits for it, a job posted while
 * queued is not queued twice, a job posted while it runs runs once more, jobs run in order,
 * the last detach stops the thread (a post after it is refused), and a slab readies its spare
 * there (kv_slab_reserve, then kv_slab_reserve_wait).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "store/obj_slab.h"
#include "store/prefault.h"
#include "prefault_tjob.h"

/* without a user there is no thread: the caller is told to do the work itself */
static void test_no_user(void **state)
{
    (void)state;
    struct tjob t;
    tjob_init(&t, true);
    assert_false(kv_prefault_post(&t.job));
    kv_prefault_wait(&t.job); /* returns at once */
    assert_int_equal(tjob_runs(&t), 0);
    tjob_fini(&t);
}

/* a job runs once, on another thread; wait returns after it */
static void test_runs_once(void **state)
{
    (void)state;
    struct tjob t;
    tjob_init(&t, true);
    kv_prefault_attach();
    assert_true(kv_prefault_post(&t.job));
    kv_prefault_wait(&t.job);
    assert_int_equal(tjob_runs(&t), 1);
    assert_false(pthread_equal(t.self, pthread_self()));
    kv_prefault_detach();
    assert_false(kv_prefault_post(&t.job)); /* the last user left: no thread */
    assert_int_equal(tjob_runs(&t), 1);
    tjob_fini(&t);
}

/* posted while queued: still once; posted while running: once more; jobs in post order */
static void test_queued_and_running(void **state)
{
    (void)state;
    struct tjob a, b, c;
    int order[8], n = 0;
    tjob_init(&a, false); /* held: the thread is busy with it */
    tjob_init(&b, true);
    tjob_init(&c, true);
    a.order = b.order = c.order = order;
    a.norder = b.norder = c.norder = &n;
    a.id = 1, b.id = 2, c.id = 3;
    kv_prefault_attach();
    assert_true(kv_prefault_post(&a.job));
    tjob_wait_entered(&a); /* a runs and waits on its gate */
    assert_true(kv_prefault_post(&b.job));
    assert_true(kv_prefault_post(&b.job)); /* queued already: not twice */
    assert_true(kv_prefault_post(&c.job));
    assert_true(kv_prefault_post(&a.job)); /* running: once more, after the queue */
    tjob_open(&a);
    kv_prefault_wait(&a.job);
    kv_prefault_wait(&b.job);
    kv_prefault_wait(&c.job);
    assert_int_equal(tjob_runs(&a), 2);
    assert_int_equal(tjob_runs(&b), 1);
    assert_int_equal(tjob_runs(&c), 1);
    assert_int_equal(n, 4);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 2);
    assert_int_equal(order[2], 3);
    assert_int_equal(order[3], 1);
    kv_prefault_detach();
    tjob_fini(&a);
    tjob_fini(&b);
    tjob_fini(&c);
}

/* the last detach runs what is queued before the thread stops; a new user starts a new thread */
static void test_detach_drains(void **state)
{
    (void)state;
    struct tjob a, b;
    tjob_init(&a, false);
    tjob_init(&b, true);
    kv_prefault_attach();
    assert_true(kv_prefault_post(&a.job));
    tjob_wait_entered(&a);
    assert_true(kv_prefault_post(&b.job));
    tjob_open(&a);
    kv_prefault_detach(); /* joins after a and b ran */
    assert_int_equal(tjob_runs(&a), 1);
    assert_int_equal(tjob_runs(&b), 1);
    kv_prefault_attach();
    assert_true(kv_prefault_post(&b.job));
    kv_prefault_wait(&b.job);
    assert_int_equal(tjob_runs(&b), 2);
    kv_prefault_detach();
    tjob_fini(&a);
    tjob_fini(&b);
}

/* a slab's spare comes from the thread; records from it are zero; fini waits for a spare in
 * flight (run under ASan/TSan in CI) */
static void test_slab_spare(void **state)
{
    (void)state;
    struct kv_slab s;
    struct kv_slab_stats st;
    kv_slab_init(&s, true);
    kv_slab_reserve(&s);
    kv_slab_reserve_wait(&s);
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, KV_SLAB_CHUNK);
    unsigned char *r = kv_slab_alloc(&s, 64);
    assert_non_null(r);
    for (int k = 0; k < 64; k++)
        assert_int_equal(r[k], 0);
    kv_slab_stats(&s, &st);
    assert_int_equal(st.mapped, KV_SLAB_CHUNK); /* the spare, no new mapping */
    kv_slab_fini(&s);
    struct kv_slab s2;
    kv_slab_init(&s2, true);
    kv_slab_reserve(&s2); /* fini right away: it waits for the spare, then unmaps it */
    kv_slab_fini(&s2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_user),
        cmocka_unit_test(test_runs_once),
        cmocka_unit_test(test_queued_and_running),
        cmocka_unit_test(test_detach_drains),
        cmocka_unit_test(test_slab_spare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
