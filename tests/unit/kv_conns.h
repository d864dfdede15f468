/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kv_conns.h - helpers of the tests that hold many connections at once: the process's thread
 * count (to show that connections cost no thread) and a descriptor limit raised for them.
 * Include after cmocka.h. Thread model: the test's thread.
 */
#ifndef KV_TEST_CONNS_H
#define KV_TEST_CONNS_H

#include <dirent.h>
#include <sys/resource.h>

/* Threads of this process now (/proc/self/task). */
static inline int kv_test_thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* The soft RLIMIT_NOFILE raised to the hard limit; fails the test when even that is below need
 * descriptors. */
static inline void kv_test_raise_nofile(rlim_t need)
{
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)
        fail_msg("RLIMIT_NOFILE hard limit %llu is below the %llu descriptors this test needs "
                 "(raise it: ulimit -Hn)",
                 (unsigned long long)rl.rlim_max, (unsigned long long)need);
    rl.rlim_cur = rl.rlim_max;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
}

#endif
