/* The vramfit command: one function per subcommand, each in its own cmd_*.c.
 *
 * A subcommand gets argv after its name, prints results to stdout and errors to
 * stderr, and returns the process exit code: 0 success, 1 failure of the work
 * (the library's message is printed), 2 bad usage. Every subcommand answers
 * --help.
 */
#ifndef VF_CLI_H
#define VF_CLI_H

#include "vramfit.h"

typedef struct vf_cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} vf_cli_command;

#define VF_EXIT_OK 0
#define VF_EXIT_FAIL 1
#define VF_EXIT_USAGE 2

/* Prints "vramfit: <message>" for a failed library call; returns VF_EXIT_FAIL. */
int vf_cli_fail(vf_status st);
/* 1 when arg is -h or --help. */
int vf_cli_is_help(const char *arg);

int vf_cmd_info(int argc, char **argv);
int vf_cmd_inspect(int argc, char **argv);
int vf_cmd_tokenize(int argc, char **argv);
int vf_cmd_encode(int argc, char **argv);
int vf_cmd_generate(int argc, char **argv);
int vf_cmd_synth(int argc, char **argv);
int vf_cmd_quantize(int argc, char **argv);
int vf_cmd_plan(int argc, char **argv);
int vf_cmd_bench(int argc, char **argv);

#endif
