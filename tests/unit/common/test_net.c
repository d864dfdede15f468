/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_net.c - common/net.h: the polling window a waiter learns from its waits (kv_spin: grows
 * while waits end within max_us, halves to nothing when they do not) and kv_net_read_some
 * (what has arrived, at most n bytes; polling first, then blocking until the deadline; EOF and
 * timeouts named).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/net.h"
#include "common/util.h"

static void test_spin_learns(void **state)
{
    (void)state;
    struct kv_spin sp;
    kv_spin_init(&sp, 50);
    assert_int_equal(kv_spin_window(&sp), 50); /* starts open */
    kv_spin_learn(&sp, 10);
    assert_int_equal(kv_spin_window(&sp), 50); /* never beyond max */
    /* answers slower than the window: polling only burnt CPU, the window halves to 0 */
    int want[] = {25, 12, 6, 0, 0};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        kv_spin_learn(&sp, 51);
        assert_int_equal(kv_spin_window(&sp), want[i]);
    }
    /* answers within max_us again: it reopens by doubling, then jumps to max */
    int grow[] = {4, 8, 16, 32, 50};
    for (size_t i = 0; i < sizeof(grow) / sizeof(grow[0]); i++) {
        kv_spin_learn(&sp, 50);
        assert_int_equal(kv_spin_window(&sp), grow[i]);
    }
    /* max 0: never polls, whatever it sees */
    kv_spin_init(&sp, 0);
    assert_int_equal(kv_spin_window(&sp), 0);
    kv_spin_learn(&sp, 1);
    assert_int_equal(kv_spin_window(&sp), 0);
    kv_spin_init(&sp, -5);
    assert_int_equal(kv_spin_window(&sp), 0);
}

struct late_write {
    int fd;
    int delay_ms;
};

static void *write_late(void *arg)
{
    struct late_write *w = arg;
    kv_sleep_ms(w->delay_ms);
    ssize_t n = write(w->fd, "late", 4);
    (void)n;
    return NULL;
}

static void test_read_some(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    char buf[16];
    size_t got = 99;

    /* n == 0 reads nothing */
    assert_int_equal(kv_net_read_some(sv[0], buf, 0, -1, 0, &got), KV_OK);
    assert_int_equal(got, 0);

    /* what is there, at most n: a short buffer takes its part, the rest stays */
    assert_int_equal(write(sv[1], "abcdef", 6), 6);
    assert_int_equal(kv_net_read_some(sv[0], buf, 4, -1, 50, &got), KV_OK);
    assert_int_equal(got, 4);
    assert_memory_equal(buf, "abcd", 4);
    assert_int_equal(kv_net_read_some(sv[0], buf, sizeof(buf), -1, 0, &got), KV_OK);
    assert_int_equal(got, 2);
    assert_memory_equal(buf, "ef", 2);

    /* bytes that come after the polling window: the call blocks for them */
    struct late_write w = {sv[1], 20};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, write_late, &w), 0);
    assert_int_equal(kv_net_read_some(sv[0], buf, sizeof(buf), kv_now_ms() + 5000, 100, &got),
                     KV_OK);
    pthread_join(t, NULL);
    assert_int_equal(got, 4);
    assert_memory_equal(buf, "late", 4);

    /* nothing before the deadline */
    int64_t t0 = kv_now_ms();
    assert_int_equal(kv_net_read_some(sv[0], buf, sizeof(buf), t0 + 30, 100, &got), KV_ETIMEDOUT);
    assert_int_equal(got, 0);

    /* the peer closed */
    close(sv[1]);
    assert_int_equal(kv_net_read_some(sv[0], buf, sizeof(buf), -1, 10, &got), KV_ECONNRESET);
    close(sv[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spin_learns),
        cmocka_unit_test(test_read_some),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
