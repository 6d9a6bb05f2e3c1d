"""Draws the PNG plots of docs/benchmarks.md from the JSON files tpcomm-bench writes (--json):
    python3 docs/plot_benchmarks.py OUTDIR allreduce_graph.json [allreduce_eager.json] [tp_qknorm_graph.json]
       [kernels_norm.json] [kernels_gemm.json]
Each input is recognised by its records; missing ones are skipped. Needs matplotlib."""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        return json.load(f)


def plot_allreduce(recs, out, mode):
    impls = {}
    for r in recs:
        if r.get("time_us") is None:
            continue
        impls.setdefault(r["impl"], []).append((r["size"], r["time_us"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, pts in impls.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("message size (bytes, bf16)")
    ax.set_ylabel("time per all-reduce (us)")
    ax.set_title(f"all-reduce, 2 x H200 (NVLink), {mode}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_qknorm(recs, out):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    shapes = sorted({(r["q_dim"], r["k_dim"]) for r in recs}, reverse=True)
    for ax, (qd, kd) in zip(axes, shapes):
        rows = sorted((r for r in recs if r["q_dim"] == qd and r["k_dim"] == kd), key=lambda r: r["tokens"])
        for key in ("fused", "unf-nccl", "unf-ours", "auto"):
            pts = [(r["tokens"], r[key]) for r in rows if r.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=key)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"q {qd} / k {kd}, world {rows[0]['world']}, {rows[0]['mode']}")
        ax.set_xlabel("tokens")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time (us)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_roofline(recs, out, title):
    pts = [r for r in recs if r.get("floor_us") and (r.get("graph_us") or r.get("eager_us"))]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in pts:
        t = r.get("graph_us") or r.get("eager_us")
        ax.scatter(r["floor_us"], t, s=18)
        ax.annotate(str(r.get("name") or r.get("kernel") or r.get("shape", "")), (r["floor_us"], t), fontsize=6)
    lo = min(r["floor_us"] for r in pts)
    hi = max(r["floor_us"] for r in pts)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="memory floor (bytes / copy bandwidth)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("floor (us)")
    ax.set_ylabel("measured (us)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return True


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    for path in sys.argv[2:]:
        if not os.path.exists(path):
            continue
        recs = load(path)
        if not recs:
            continue
        base = os.path.splitext(os.path.basename(path))[0]
        first = recs[0]
        if "impl" in first and "size" in first:
            plot_allreduce(recs, os.path.join(outdir, base + ".png"), first.get("mode", ""))
        elif "q_dim" in first and "tokens" in first:
            plot_qknorm(recs, os.path.join(outdir, base + ".png"))
        else:
            plot_roofline(recs, os.path.join(outdir, base + ".png"), base.replace("_", " "))
        print("plotted", path)


if __name__ == "__main__":
    main()
