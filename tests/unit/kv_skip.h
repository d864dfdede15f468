/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kv_skip.h - a skip that ctest can see. cmocka's skip() marks one test as skipped but the
 * executable still exits 0, so ctest would report a pass. KV_SKIP(why) prints why, counts the
 * skip and calls skip(); main() returns kv_skip_exit(failed), which is 77 (ctest's
 * SKIP_RETURN_CODE, set on every test in tests/CMakeLists.txt) when nothing failed and at least
 * one test skipped. scripts/test.sh fails the suite when a test skips that is not on its
 * allow-list. Include after cmocka.h.
 *
 * KV_UNDER_TSAN is 1 in a ThreadSanitizer build (-DKV_TSAN=ON): tests that fork a
 * multi-threaded process (TSan does not support threads in the child of such a fork) skip
 * through it with a reason.
 *
 * Thread model: KV_SKIP is called on cmocka's test thread (the main thread), like skip().
 */
#ifndef KV_TEST_SKIP_H
#define KV_TEST_SKIP_H

#if defined(__SANITIZE_THREAD__)
#define KV_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KV_UNDER_TSAN 1
#endif
#endif
#ifndef KV_UNDER_TSAN
#define KV_UNDER_TSAN 0
#endif

/* The exit status for a test executable that skips without running anything (a whole-binary
 * precondition such as a missing server binary): what ctest reports as "Skipped". */
#define KV_SKIP_EXIT 77

/* The number of tests skipped through KV_SKIP in this process. */
static inline int *kv_skip_count(void)
{
    static int n;
    return &n;
}

/* Skips the running cmocka test, saying why (one line on stdout). */
#define KV_SKIP(why)                                                                               \
    do {                                                                                           \
        print_message("[ SKIP     ] %s\n", (why));                                                 \
        (*kv_skip_count())++;                                                                      \
        skip();                                                                                    \
    } while (0)

/* main()'s exit status from cmocka's failure count: 1 when a test failed, 77 when none failed
 * but one skipped, else 0. */
static inline int kv_skip_exit(int failed)
{
    if (failed)
        return 1;
    return *kv_skip_count() ? KV_SKIP_EXIT : 0;
}

#endif
