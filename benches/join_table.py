#!/usr/bin/env python3
"""Joins `sparsecube bench --json` and `benches/torch_baselines.py` output by workload id into one
markdown table of ratios (measured side by side in one device session).

    python3 benches/join_table.py ours.json torch.json [--json table.json --card CARD --commit C] > table.md

`time ×` is the baseline's median step time over ours (> 1: ours is faster); `mem ×` is our peak
device memory over the baseline's (< 1: ours holds less). A workload whose kernel does not exist
yet shows its status instead of a number. With `--json`, the same rows are also written as a JSON
list of objects (`workload`, `ours`, `ours_ms`, `ours_peak_mib`, `baseline`, `baseline_ms`,
`baseline_peak_mib`, `card`, `commit`, plus each side's status and the two ratios), atomically.
"""

import argparse
import json
import os


def fmt_ms(r):
    return f"{r['median_ms']:.3f}" if r.get("status") == "ok" else "—"


def fmt_mib(r):
    b = r.get("peak_bytes")
    return f"{b / 2**20:.1f}" if r.get("status") == "ok" and b is not None else "—"


def ms(r):
    return r["median_ms"] if r.get("status") == "ok" else None


def mib(r):
    b = r.get("peak_bytes")
    return b / 2**20 if r.get("status") == "ok" and b is not None else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours")
    ap.add_argument("torch")
    ap.add_argument("--json", help="also write the rows here as JSON objects")
    ap.add_argument("--card", default="?", help="the card's name, for the JSON rows")
    ap.add_argument("--commit", default="?", help="the commit the binary was built from")
    args = ap.parse_args()
    with open(args.ours) as f:
        ours = json.load(f)
    with open(args.torch) as f:
        torch = json.load(f)
    rows = []
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
                rows.append(
                    {
                        "workload": wid,
                        "ours": o["impl"],
                        "ours_status": o.get("status"),
                        "ours_ms": ms(o),
                        "ours_peak_mib": mib(o),
                        "baseline": b["impl"],
                        "baseline_status": b.get("status"),
                        "baseline_ms": ms(b),
                        "baseline_peak_mib": mib(b),
                        "time_x": None if time_x == "—" else float(time_x),
                        "mem_x": None if mem_x == "—" else float(mem_x),
                        "card": args.card,
                        "commit": args.commit,
                    }
                )
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
