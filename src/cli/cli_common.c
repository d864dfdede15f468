/* SPDX-License-Identifier: Apache-2.0 */
/* cli_common.c - helpers shared by subcommands: parsing with one-line errors, signals. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

int kv_cli_parse(struct kv_cfg *c, int argc, char **argv)
{
    char err[512];
    int rc = kv_cfg_parse(c, argc, argv, err, sizeof(err));
    if (rc == KV_CFG_EXIT)
        return 0;
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", c->prog, err);
        return 2;
    }
    return -1;
}

static sigset_t blocked;

void kv_cli_block_signals(void)
{
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &blocked, NULL);
}

int kv_cli_wait_signal(void)
{
    int sig = 0;
    sigwait(&blocked, &sig);
    return sig;
}

int kv_cli_not_built(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "kvstash %s: not yet built in this version of kvstash\n", argv[0]);
    return 1;
}
