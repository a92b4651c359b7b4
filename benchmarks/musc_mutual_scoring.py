"""Time and memory of MuSc's mutual scoring (MSM) on synthetic features of the real shape, CPU.

ViT-L-14-336 at 518 px gives 37 x 37 = 1369 patches of 1024 dimensions from 4 layers; MuSc scores each of
3 aggregation degrees x 4 layers = 12 (layer, r) units, each an MSM over the N images. One process per set
size N (fresh peak RSS): it builds one layer's unit features (N, 1369, 1024), aggregates them (LNAMD, r = 3)
and runs MSM for `--queries` query images against all N (each query's cost is one N-image sweep, so the
whole unit is N times that), with iapas's chunked distance blocks.

    PYTHONPATH=. python benchmarks/musc_mutual_scoring.py --sizes 50 100 200 --queries 2 --threads 2
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PATCHES, CHANNELS, LAYERS, DEGREES = 37 * 37, 1024, 4, 3


def one_size(count: int, queries: int, threads: int) -> dict:
    import torch

    from iapas.methods.musc.scoring import CHUNK_BYTES, INTERVAL, aggregate, mutual_scores

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(count, PATCHES, CHANNELS, generator=generator)
    start = time.perf_counter()
    features = torch.cat([aggregate([tokens[i:i + 16]], 3)[:, :, 0] for i in range(0, count, 16)])
    aggregate_s = time.perf_counter() - start
    del tokens
    ticks = []
    start = time.perf_counter()

    def tick() -> None:
        ticks.append(time.perf_counter())
        if len(ticks) >= queries:
            raise StopIteration

    try:
        mutual_scores(features, INTERVAL, CHUNK_BYTES, tick)
    except StopIteration:
        pass
    per_query = (ticks[-1] - start) / len(ticks)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_unit = per_query * count
    return {
        "images": count,
        "threads": threads,
        "queries_timed": len(ticks),
        "seconds_per_query_image": round(per_query, 2),
        "seconds_per_unit_msm": round(per_unit, 1),
        "seconds_aggregation_per_unit": round(aggregate_s, 2),
        "seconds_all_12_units": round(LAYERS * DEGREES * (per_unit + aggregate_s), 1),
        "seconds_per_image_all_units": round(LAYERS * DEGREES * (per_unit + aggregate_s) / count, 2),
        "peak_rss_mb_one_unit": round(peak_mb),
        "unit_features_mb": round(count * PATCHES * CHANNELS * 4 / 2**20),
        "held_tokens_4_layers_mb": round(LAYERS * count * PATCHES * CHANNELS * 4 / 2**20),
        "distance_block_mb_iapas": round(min(CHUNK_BYTES, count * PATCHES * PATCHES * 4) / 2**20),
        "distance_block_mb_reference": round(PATCHES * (count - 1) * PATCHES * 4 / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.queries, args.threads)))
        return
    for count in args.sizes:  # a fresh process per size: its peak RSS is that size's own
        output = subprocess.run([sys.executable, __file__, "--one", str(count), "--queries", str(args.queries),
                                 "--threads", str(args.threads)], capture_output=True, text=True, check=True).stdout
        print(output.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
