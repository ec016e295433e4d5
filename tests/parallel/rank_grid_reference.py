"""RankGrid against Megatron-Core's own RankGenerator.

For every valid layout (TP, CP, PP, EP, ETP) on 1..32 ranks, builds the two
generators exactly as megatron.core.parallel_state.initialize_model_parallel
does (order "tp-cp-ep-dp-pp"; the decoder generator with ep=1, the expert
generator with cp=1 and tp=ETP, dp=EDP) and compares every group list, in
order, with rank_grid_dump's. RankGenerator is pure Python: no
torch.distributed initialisation is needed. It also checks that RankGrid
accepts exactly the layouts initialize_model_parallel accepts.

usage: rank_grid_reference.py RANK_GRID_DUMP
Exits 77 (skipped) when megatron-core is not installed.
"""

import json
import subprocess
import sys

try:
    from megatron.core.parallel_state import RankGenerator
except Exception as e:  # ImportError, or torch missing underneath
    print(f"SKIP: megatron.core.parallel_state not importable: {e}")
    sys.exit(77)

ORDER = "tp-cp-ep-dp-pp"  # initialize_model_parallel's default order
MAX_WORLD = 32

# Our group kind -> (generator, Megatron token), as parallel_state uses them.
DENSE = {
    "tp": "tp",  # _TENSOR_MODEL_PARALLEL_GROUP
    "cp": "cp",  # _CONTEXT_PARALLEL_GROUP
    "dp": "dp",  # _DATA_PARALLEL_GROUP
    "pp": "pp",  # _PIPELINE_MODEL_PARALLEL_GROUP
    "tp-cp": "tp-cp",  # _TENSOR_AND_CONTEXT_PARALLEL_GROUP
    "dp-cp": "dp-cp",  # _DATA_PARALLEL_GROUP_WITH_CP
    "tp-cp-dp": "tp-dp-cp",  # _TENSOR_AND_DATA_PARALLEL_GROUP_WITH_CP
    "tp-pp": "tp-pp",  # _MODEL_PARALLEL_GROUP
}
EXPERT = {
    "etp": "tp",  # _EXPERT_TENSOR_PARALLEL_GROUP
    "ep": "ep",  # _EXPERT_MODEL_PARALLEL_GROUP
    "edp": "dp",  # _EXPERT_DATA_PARALLEL_GROUP
    "etp-ep": "tp-ep",  # _EXPERT_TENSOR_AND_MODEL_PARALLEL_GROUP
    "etp-ep-pp": "tp-ep-pp",  # _EXPERT_TENSOR_MODEL_PIPELINE_PARALLEL_GROUP
}


def megatron_accepts(world, tp, cp, pp, ep, etp):
    """initialize_model_parallel's own divisibility checks."""
    return world % (tp * cp * pp) == 0 and world % (etp * ep * pp) == 0


def megatron_groups(world, tp, cp, pp, ep, etp):
    dp = world // (tp * pp * cp)
    decoder = RankGenerator(tp=tp, ep=1, dp=dp, pp=pp, cp=cp, order=ORDER, rank_offset=0)
    edp = world // (etp * ep * pp)
    expert = RankGenerator(tp=etp, ep=ep, dp=edp, pp=pp, cp=1, order=ORDER, rank_offset=0)
    # The assertion initialize_model_parallel makes: both grids share PP.
    assert decoder.get_ranks("pp") == expert.get_ranks("pp")
    groups = {name: decoder.get_ranks(token) for name, token in DENSE.items()}
    groups.update({name: expert.get_ranks(token) for name, token in EXPERT.items()})
    return groups


def layouts():
    """Every valid layout up to MAX_WORLD, plus invalid ones on each axis."""
    for world in range(1, MAX_WORLD + 1):
        div = [d for d in range(1, world + 1) if world % d == 0]
        for tp in div:
            for cp in div:
                for pp in div:
                    if world % (tp * cp * pp):
                        continue
                    stage = world // pp
                    for ep in div:
                        for etp in div:
                            if stage % (ep * etp) == 0:
                                yield (world, tp, cp, pp, ep, etp)
        for v in range(2, world + 2):  # sizes that do not divide, one axis at a time
            if world % v:
                yield (world, v, 1, 1, 1, 1)
                yield (world, 1, v, 1, 1, 1)
                yield (world, 1, 1, v, 1, 1)
                yield (world, 1, 1, 1, v, 1)
                yield (world, 1, 1, 1, 1, v)
        if world % 4 == 0:  # grid fine, expert fold not: EP*ETP > ranks per stage
            yield (world, 1, 1, 2, world // 2, 2)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    cases = list(layouts())
    stdin = "".join(" ".join(map(str, c)) + "\n" for c in cases)
    out = subprocess.run([sys.argv[1]], input=stdin, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == len(cases), f"{len(lines)} answers for {len(cases)} layouts"
    failures, valid = 0, 0
    for case, line in zip(cases, lines):
        status, _, payload = line.partition(" ")
        expect_ok = megatron_accepts(*case)
        if (status == "ok") != expect_ok:
            failures += 1
            print(f"FAIL {case}: Megatron {'accepts' if expect_ok else 'rejects'}, we said {line}")
            continue
        if not expect_ok:
            continue
        valid += 1
        ours = json.loads(payload)
        theirs = megatron_groups(*case)
        for name, groups in theirs.items():
            if ours[name] != groups:
                failures += 1
                print(f"FAIL {case} {name}: ours {ours[name]} Megatron {groups}")
    print(f"{valid} valid and {len(cases) - valid} invalid layouts on 1..{MAX_WORLD} ranks, "
          f"{len(DENSE) + len(EXPERT)} group kinds each; {failures} mismatches")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
