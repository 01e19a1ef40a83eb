#!/usr/bin/env python3
"""Summarises `ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum,...` output: one
row per kernel launch (in launch order) with its time, DRAM bytes and achieved bandwidth, then
each kernel family's share of the step's kernel time (the primitives of codegen/src/prim/:
grouping, scan and sort — in an attention step, SPT's key index —, the column and row reductions
of the bias and router gradients, the selections).

    python3 benches/ncu_summary.py ncu.csv
"""

import csv
import sys


def main():
    with open(sys.argv[1]) as f:
        lines = [l for l in f if l.startswith('"')]  # ncu prints its own log lines first
    rows = list(csv.DictReader(lines))
    launches = {}
    for r in rows:
        key = (int(r["ID"]), r["Kernel Name"])
        unit, value = r["Metric Unit"], float(r["Metric Value"].replace(",", ""))
        scale = {
            "ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0,
            "s": 1e3, "second": 1e3,
            "byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9,
        }.get(unit, 1)
        launches.setdefault(key, {})[r["Metric Name"]] = value * scale
    print("| # | kernel | ms | DRAM MB read | DRAM MB written | GB/s | SM % of peak |")
    print("|---|---|---|---|---|---|---|")
    for (i, name), m in sorted(launches.items()):
        ms = m.get("gpu__time_duration.sum", 0.0)
        rd = m.get("dram__bytes_read.sum", 0.0)
        wr = m.get("dram__bytes_write.sum", 0.0)
        bw = (rd + wr) / (ms * 1e-3) / 1e9 if ms else 0.0
        sm = m.get("sm__throughput.avg.pct_of_peak_sustained_elapsed", 0.0)
        print(f"| {i} | {name.split('(')[0]} | {ms:.3f} | {rd / 1e6:.1f} | {wr / 1e6:.1f} | {bw:.0f} | {sm:.1f} |")
    # The share is of our sparse step: the dense baseline's own kernels (dense_*) are left out
    # (device-check.sh profiles the routed FFN's sparse launches only, with --launch-count).
    total = sum(
        m.get("gpu__time_duration.sum", 0.0)
        for (_, name), m in launches.items()
        if not name.startswith("dense_")
    )
    families = {
        "grouping / scan / sort (prim)": ("group_", "rows_", "sort_", "scan_"),
        "bias and router gradients (column and row reductions)": (
            "column_", "row_sums", "routed_bwd_router",
        ),
        "selection (global radix select, per-row top-k)": (
            "select_", "row_topk", "group_topk", "spt_select", "routed_gate",
        ),
    }
    print()
    print(f"| family | ms | share of the step's {total:.3f} ms |")
    print("|---|---|---|")
    for family, prefixes in families.items():
        ms = sum(
            m.get("gpu__time_duration.sum", 0.0)
            for (_, name), m in launches.items()
            if name.split("(")[0].split("<")[0].strip().startswith(prefixes)
        )
        share = 100.0 * ms / total if total else 0.0
        print(f"| {family} | {ms:.3f} | {share:.1f} % |")


if __name__ == "__main__":
    main()
