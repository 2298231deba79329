"""Peak memory of the streamed merge (`embedcache.parts.merge_parts`) against the size of the cache it writes.

Synthetic parts shaped like a 3B decoder's (hidden 3072, float16, 32 rows per part, rows in shuffled
order, tests/test_embed_merge.py's `synthetic_run`) are merged into a cache; the peak is measured two ways:
tracemalloc (Python and numpy allocations) and the process's resident memory (sampled every 10 ms, minus
the resident memory before the merge). The cache's embeddings alone would be the peak of holding them.

    python benchmarks/merge_memory.py --parts 250,1000,4000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="250,1000,4000")
    ap.add_argument("--hidden", type=int, default=3072)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("_merge_fixtures", ROOT / "tests" / "test_embed_merge.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    sys_path = ROOT / "benchmarks"
    spec2 = importlib.util.spec_from_file_location("_throughput", sys_path / "embed_throughput.py")
    throughput = importlib.util.module_from_spec(spec2)
    spec2.loader.exec_module(throughput)
    from micro.embedcache.parts import MERGE_WINDOW_BYTES, merge_parts

    rows = []
    for n in (int(x) for x in args.parts.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            plan, expected = fixtures.synthetic_run(tmp / "c.h5.parts", n, hidden=args.hidden)
            cache_mib = sum(e.nbytes for e in expected.values()) / 2**20
            del expected
            meta = dict(fixtures.META)
            with throughput.PeakRSS() as rss:
                base_rss = rss._rss()
                tracemalloc.start()
                t0 = time.perf_counter()
                merge_parts(tmp / "c.h5", tmp / "c.h5.parts", n, plan, meta, args.hidden, "key")
                secs = time.perf_counter() - t0
                traced = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
            row = {"parts": n, "cache_embeddings_mib": round(cache_mib, 1), "merge_s": round(secs, 2),
                   "tracemalloc_peak_mib": round(traced, 1), "rss_growth_mib": round(rss.peak - base_rss, 1),
                   "window_mib": MERGE_WINDOW_BYTES / 2**20}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
