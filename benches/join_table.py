#!/usr/bin/env python3
"""Joins `sparsecube bench --json` and `benches/torch_baselines.py` output by workload id into one
markdown table of ratios (measured side by side in one device session).

    python3 benches/join_table.py ours.json torch.json > table.md

`time ×` is the baseline's median step time over ours (> 1: ours is faster); `mem ×` is our peak
device memory over the baseline's (< 1: ours holds less). A workload whose kernel does not exist
yet shows its status instead of a number.
"""

import json
import sys


def fmt_ms(r):
    return f"{r['median_ms']:.3f}" if r.get("status") == "ok" else "—"


def fmt_mib(r):
    b = r.get("peak_bytes")
    return f"{b / 2**20:.1f}" if r.get("status") == "ok" and b is not None else "—"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: join_table.py OURS.json TORCH.json")
    with open(sys.argv[1]) as f:
        ours = json.load(f)
    with open(sys.argv[2]) as f:
        torch = json.load(f)
    print(f"ours: {ours.get('device', '?')}  ")
    print(f"torch {torch.get('torch', '?')} on {torch.get('device', '?')}  ")
    c = torch.get("ceilings")
    if c:
        print(
            f"measured ceilings: copy {c['copy_gb_s']:.0f} GB/s (read + write), "
            f"f32 matmul {c['matmul_f32_tflop_s']:.1f} TFLOP/s, bf16 matmul {c['matmul_bf16_tflop_s']:.0f} TFLOP/s"
        )
    print()
    print("| workload | ours | ours ms | ours peak MiB | baseline | baseline ms | baseline peak MiB | time × | mem × |")
    print("|---|---|---|---|---|---|---|---|---|")
    base_by = {}
    for r in torch["results"]:
        base_by.setdefault(r["workload"], []).append(r)
    ours_by = {}
    for r in ours["results"]:
        ours_by.setdefault(r["workload"], []).append(r)
    for w in ours["workloads"]:
        wid = w["id"]
        for o in ours_by.get(wid, []):
            for b in base_by.get(wid, []) or [{"impl": "—", "status": "no baseline run"}]:
                time_x = mem_x = "—"
                if o.get("status") == "ok" and b.get("status") == "ok":
                    time_x = f"{b['median_ms'] / o['median_ms']:.2f}"
                    if o.get("peak_bytes") and b.get("peak_bytes"):
                        mem_x = f"{o['peak_bytes'] / b['peak_bytes']:.3f}"
                ours_cell = o["impl"] if o.get("status") == "ok" else f"{o['impl']} ({o.get('status')})"
                base_cell = b["impl"] if b.get("status") == "ok" else f"{b['impl']} ({b.get('status')})"
                print(
                    f"| {wid} | {ours_cell} | {fmt_ms(o)} | {fmt_mib(o)} | {base_cell} | {fmt_ms(b)} | "
                    f"{fmt_mib(b)} | {time_x} | {mem_x} |"
                )


if __name__ == "__main__":
    main()
