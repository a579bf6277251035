/* The planner's streaming model: which blocks stay resident, and how long a
 * call takes when the others come through the staging ring.
 *
 * The ring is simulated rather than summarised because overlap is local: a
 * copy can run only while a slot is free, and a slot frees when the block that
 * used it `depth` streamed blocks ago has finished computing. Two engines (copy
 * and compute) and one event per block; a few hundred blocks, microseconds.
 * Calls repeat (the UNet runs once per step), so copies of the next call's
 * first blocks start during the previous call's tail, and the steady state is
 * the third call's duration.
 */
#include "core/alloc.h"
#include "core/error.h"
#include "mem/planner.h"

#include <stdlib.h>

typedef struct rank_item {
    int b;
    double key;
} rank_item;

static int by_key_desc(const void *a, const void *b)
{
    double x = ((const rank_item *)a)->key, y = ((const rank_item *)b)->key;
    if (x != y)
        return x < y ? 1 : -1;
    return ((const rank_item *)a)->b - ((const rank_item *)b)->b;
}

vf_status vf_plan_rank_blocks(vf_plan_component *pc)
{
    rank_item *items = vf_malloc(sizeof *items * (size_t)(pc->nblocks ? pc->nblocks : 1));
    int *order = vf_malloc(sizeof *order * (size_t)(pc->nblocks ? pc->nblocks : 1));
    if (!items || !order) {
        vf_free(items);
        vf_free(order);
        return vf_error_prefix(VF_ERR_NO_MEMORY, "plan: ranking blocks");
    }
    for (int b = 0; b < pc->nblocks; b++) {
        const vf_plan_block *pb = &pc->blocks[b];
        items[b].b = b;
        items[b].key = pb->bytes ? pb->flops / (double)pb->bytes : 1e300;
    }
    qsort(items, (size_t)pc->nblocks, sizeof *items, by_key_desc);
    for (int i = 0; i < pc->nblocks; i++)
        order[i] = items[i].b;
    vf_free(items);
    vf_free(pc->order);
    pc->order = order;
    return VF_OK;
}

uint64_t vf_plan_pick_resident(vf_plan_component *pc, uint64_t room, int high_first)
{
    uint64_t used = 0;
    for (int b = 0; b < pc->nblocks; b++)
        pc->blocks[b].mode = VF_BLOCK_STREAMED;
    for (int i = 0; i < pc->nblocks; i++) {
        vf_plan_block *pb = &pc->blocks[pc->order[high_first ? i : pc->nblocks - 1 - i]];
        if (pb->bytes == 0 || used + pb->bytes <= room) {
            pb->mode = VF_BLOCK_RESIDENT;
            used += pb->bytes;
        }
    }
    return used;
}

#define MAX_DEPTH 16

double vf_plan_simulate(const vf_plan_component *pc, int depth, double bw, double disk_bw,
                        double rate, double overhead_s)
{
    double slot_free[MAX_DEPTH] = {0};
    double copy_free = 0, done = 0, start = 0;
    long s = 0;
    if (depth < 1)
        depth = 1;
    if (depth > MAX_DEPTH)
        depth = MAX_DEPTH;
    for (int call = 0; call < 3; call++) {
        start = done;
        for (int b = 0; b < pc->nblocks; b++) {
            const vf_plan_block *pb = &pc->blocks[b];
            double link = pb->home == VF_TIER_DISK && disk_bw < bw ? disk_bw : bw;
            double copy = (double)pb->bytes / link, ready = done;
            int slot = -1;
            if (pb->mode == VF_BLOCK_STREAMED) {
                slot = (int)(s++ % depth);
                double t0 = copy_free > slot_free[slot] ? copy_free : slot_free[slot];
                copy_free = t0 + copy;
                ready = copy_free > done ? copy_free : done;
            } else if (pb->mode == VF_BLOCK_ON_DEMAND) {
                double t0 = copy_free > done ? copy_free : done;
                copy_free = t0 + copy;
                ready = copy_free;
            }
            done = ready + pb->flops / rate + overhead_s + pb->extra_s;
            if (slot >= 0)
                slot_free[slot] = done;
        }
    }
    return done - start;
}
