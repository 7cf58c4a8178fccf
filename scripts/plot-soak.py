#!/usr/bin/env python3
"""Plots the CSV of tools/src/bin/soak.rs (written by scripts/soak.sh).

    scripts/plot-soak.py [CSV] [OUTPUT_DIR]
    scripts/plot-soak.py target/soak/soak.csv docs/img     # the defaults

Writes two PNGs into OUTPUT_DIR:
  soak-rss.png      the adapter's resident memory (MiB) over time, and below it
                    its open file descriptors and threads
  soak-latency.png  p50 and p99 latency per service over time (log scale), one
                    panel per service, with requests and errors in the title

Needs matplotlib (`pip install matplotlib`, or Debian's python3-matplotlib).
"""

import csv
import math
import os
import sys

SERVICES = ("socketmap", "policy", "sasl")


def number(text):
    """A CSV cell as a float; NaN for an empty cell (no sample), so gaps stay gaps."""
    return float(text) if text not in ("", None) else math.nan


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"plot-soak.py: {path} has no rows")
    columns = rows[0].keys()
    return {name: [number(r[name]) for r in rows] for name in columns}


def time_axis(seconds):
    """Minutes for long runs, seconds for short ones."""
    if seconds and max(seconds) > 180:
        return [s / 60 for s in seconds], "elapsed (min)"
    return seconds, "elapsed (s)"


def total(values):
    return int(sum(v for v in values if not math.isnan(v)))


def main():
    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args) or len(args) > 2:
        print(__doc__.strip())
        return 0 if len(args) <= 2 else 2
    path = args[0] if args else "target/soak/soak.csv"
    out_dir = args[1] if len(args) > 1 else "docs/img"

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        print(
            "plot-soak.py: matplotlib is not installed; install it with "
            "`pip install matplotlib` (or `apt-get install python3-matplotlib`) "
            f"and run: {sys.argv[0]} {path} {out_dir}",
            file=sys.stderr,
        )
        return 3

    data = read(path)
    x, xlabel = time_axis(data["elapsed_s"])
    os.makedirs(out_dir, exist_ok=True)

    # Memory, descriptors, threads.
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6), height_ratios=(2, 1))
    rss_mib = [v / 1024 for v in data["rss_kib"]]
    top.plot(x, rss_mib, color="tab:blue", marker=".", markersize=3)
    top.set_ylabel("RSS (MiB)")
    top.set_ylim(bottom=0, top=max([v for v in rss_mib if not math.isnan(v)] + [1]) * 1.2)
    top.grid(True, alpha=0.3)
    known = [v for v in rss_mib if not math.isnan(v)]
    span = f": {known[0]:.0f} MiB before the load, {known[-1]:.0f} MiB at its end" if known else ""
    top.set_title(f"userli-postfix-adapter under sustained mixed load, resident memory{span}", fontsize=10)
    bottom.plot(x, data["fds"], color="tab:orange", label="open file descriptors")
    bottom.plot(x, data["threads"], color="tab:green", label="threads")
    bottom.set_ylabel("count")
    bottom.set_ylim(bottom=0, top=max([v for v in data["fds"] + data["threads"] if not math.isnan(v)] + [1]) * 1.3)
    bottom.set_xlabel(xlabel)
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="lower right")
    fig.tight_layout()
    rss_png = os.path.join(out_dir, "soak-rss.png")
    fig.savefig(rss_png, dpi=110)
    plt.close(fig)

    # Latency per service.
    services = [s for s in SERVICES if f"{s}_p99_us" in data]
    if not services:
        sys.exit(f"plot-soak.py: {path} has no service columns")
    fig, axes = plt.subplots(len(services), 1, sharex=True, figsize=(9, 2.6 * len(services) + 0.6), squeeze=False)
    interval = [b - a for a, b in zip(data["elapsed_s"], data["elapsed_s"][1:])]
    for ax, service in zip(axes[:, 0], services):
        requests = total(data[f"{service}_requests"])
        errors = total(data[f"{service}_errors"])
        rate = requests / max(data["elapsed_s"][-1], 1e-9)
        title = f"{service}: {requests} requests ({rate:.0f}/s), {errors} errors"
        if service == "policy" and "policy_rejects" in data:
            title += f", {total(data['policy_rejects'])} REJECT/DEFER"
        shown = []
        for column, label, style in (("p50", "p50", "-"), ("p99", "p99", "-"), ("max", "max", ":")):
            values = [v / 1000 for v in data[f"{service}_{column}_us"]]
            shown += [v for v in values if v > 0]
            ax.plot(x, values, style, label=label, marker="." if style == "-" else None, markersize=3)
        ax.set_yscale("log")
        if shown:
            # Room above and below, so a panel spanning less than a decade still
            # reaches the next labelled tick on both sides.
            ax.set_ylim(min(shown) / 2, max(shown) * 2)
        # Labels at 1, 2, 5 x 10^n as plain numbers (0.1, 0.2, 0.5, 1 ms), so even a
        # panel spanning less than a decade has several.
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("latency (ms)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel(xlabel)
    if interval:
        fig.suptitle(
            f"Latency per {sorted(interval)[len(interval) // 2]:.0f} s interval (request written to reply read)",
            fontsize=11,
        )
    fig.tight_layout()
    latency_png = os.path.join(out_dir, "soak-latency.png")
    fig.savefig(latency_png, dpi=110)
    plt.close(fig)

    print(f"plot-soak.py: wrote {rss_png} and {latency_png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
