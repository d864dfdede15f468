/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_prefault_fork.c - the prefault thread (prefault.c) across fork(): a child forked while
 * one job runs on the parent's thread and another waits in its queue does not wait on either
 * (they never run there), starts a thread of its own at its first post, runs the dropped job
 * when posted again, and stops its thread at its last detach; the parent's jobs run as before.
 * A file of its own: under ThreadSanitizer (threads in the child of a multi-threaded fork are
 * not supported) it skips, visibly, and scripts/test.sh allows that skip for this test only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kv_skip.h"
#include "store/prefault.h"
#include "prefault_tjob.h"

/* The child's checks: an exit status naming the first that failed (0: all held). */
static int child(struct tjob *a, struct tjob *b)
{
    kv_prefault_wait(&a->job); /* running on the parent's thread: not here, no wait */
    kv_prefault_wait(&b->job); /* queued there: the same */
    if (tjob_runs(b) != 0)
        return 10;
    struct tjob c;
    tjob_init(&c, true);
    if (!kv_prefault_post(&c.job)) /* a thread of the child's own */
        return 11;
    kv_prefault_wait(&c.job);
    if (tjob_runs(&c) != 1)
        return 12;
    if (!kv_prefault_post(&b->job)) /* the dropped job, posted again, runs here */
        return 13;
    kv_prefault_wait(&b->job);
    if (tjob_runs(b) != 1)
        return 14;
    kv_prefault_detach(); /* the last user: joins the child's thread */
    if (kv_prefault_post(&c.job))
        return 15;
    return 0;
}

static void test_fork(void **state)
{
    (void)state;
    if (KV_UNDER_TSAN) {
        KV_SKIP("ThreadSanitizer build: the forked child starts threads");
        return;
    }
    struct tjob a, b;
    tjob_init(&a, false); /* held: runs on the thread across the fork */
    tjob_init(&b, true);
    kv_prefault_attach();
    assert_true(kv_prefault_post(&a.job));
    tjob_wait_entered(&a);
    assert_true(kv_prefault_post(&b.job)); /* queued behind a */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(child(&a, &b));
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    /* the parent's jobs: unchanged by the child */
    tjob_open(&a);
    kv_prefault_wait(&a.job);
    kv_prefault_wait(&b.job);
    assert_int_equal(tjob_runs(&a), 1);
    assert_int_equal(tjob_runs(&b), 1);
    kv_prefault_detach();
    tjob_fini(&a);
    tjob_fini(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fork),
    };
    return kv_skip_exit(cmocka_run_group_tests(tests, NULL, NULL));
}
