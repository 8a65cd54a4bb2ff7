/* bench_main.c — the modelmux-bench command line: one binary, two
 * subcommands (DESIGN.md §8).
 *
 *   modelmux-bench replay LOG --target URL ...     replay a request log
 *   modelmux-bench simulate --target URL ...       bandit environment
 *
 * Each subcommand lives in its own file with one public entry point and
 * parses its own options; this file only dispatches. Exit status: 0 done,
 * 1 the run failed (unreadable or empty log, unreachable setup), 2 bad
 * usage. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

/* The one public entry point of replay.c and of simulate.c. */
int replay_main(int argc, char **argv);
int simulate_main(int argc, char **argv);

static void usage(FILE *f)
{
    fprintf(f, "usage: modelmux-bench replay LOG --target URL [--speed X|--rate R|--max]\n"
               "                             [--concurrency C] [--requests N] [--duration S]\n"
               "                             [--timeout-ms MS] [--json]\n"
               "       modelmux-bench simulate --target URL --experiment NAME --rates arm=p,...\n"
               "                               --requests N [options]\n"
               "       modelmux-bench --version | --help\n"
               "`modelmux-bench replay --help` and `modelmux-bench simulate --help` list every "
               "option; docs/bench.md explains the output.\n");
}

int main(int argc, char **argv)
{
    /* A target that closes a connection mid-write must be an error value,
     * not a signal that kills the measurement. */
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "replay") == 0) return replay_main(argc - 2, argv + 2);
    if (strcmp(cmd, "simulate") == 0) return simulate_main(argc - 2, argv + 2);
    if (strcmp(cmd, "--version") == 0) {
        printf("modelmux-bench %s\n", MM_VERSION);
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "modelmux-bench: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
