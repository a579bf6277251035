/* vramfit plan: placeholder until the planner lands (owner: plan). */
#include "cli/cli.h"

#include <stdio.h>

int vf_cmd_plan(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "vramfit plan: not yet implemented\n");
    return VF_EXIT_FAIL;
}
