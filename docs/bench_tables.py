"""Prints the markdown tables of docs/benchmarks.md from one results folder (docs/results/<date>/):
    python3 docs/bench_tables.py docs/results/2026-11-22b
Reads what bench/run_device.sh writes there: allreduce_{graph,eager}.json, tp_qknorm_{graph,eager}.json,
kernels-norm.json, kernels-gemm.json (tpcomm-bench --json), anchors.log (PyTorch all-reduce) and
kanchors.log (torch.compile / eager PyTorch kernels), so the tables are regenerated, never retyped."""
import json
import os
import sys


def load(d, name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else []


def json_lines(d, name):
    p = os.path.join(d, name)
    out = []
    if os.path.exists(p):
        for line in open(p):
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def f(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def allreduce(d, mode):
    rows = [r for r in load(d, f"allreduce_{mode}.json") if r.get("mode") == mode]
    torch = {r["bytes"]: r for r in json_lines(d, "anchors.log") if "bytes" in r}
    tkey = ("nccl_graph_us", "symm_one_shot_graph_us") if mode == "graph" else ("nccl_eager_us", "symm_one_shot_us")
    sizes = sorted({r["size"] for r in rows})
    impls = ["oneshot", "twoshot", "nccl", "nccldirect", "ncclsymm"]
    print("| bytes | auto (algo) | one-shot | two-shot | NCCL via tpcomm | NCCL direct | NCCL symm | PyTorch NCCL "
          "| PyTorch symm one-shot | best NCCL / auto |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in sizes:
        by = {r["impl"]: r for r in rows if r["size"] == s}
        a = by.get("auto")
        cell = lambda i: f(by[i]["time_us"]) if i in by and by[i].get("time_us") else "n/a"
        best = min([by[i]["time_us"] for i in ("nccl", "nccldirect", "ncclsymm") if i in by and by[i].get("time_us")] or [0])
        t = torch.get(s, {})
        print(f"| {s} | **{f(a['time_us'])}** ({a.get('algo')}) | " + " | ".join(cell(i) for i in impls) +
              f" | {f(t.get(tkey[0]), 1)} | {f(t.get(tkey[1]), 1)} | {best / a['time_us']:.2f}x |")


def qknorm(d):
    print("| mode | q/k | tokens | fused | unf-nccl | unf-ours | auto (path) | NCCL-unfused / auto |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in ("graph", "eager"):
        for r in load(d, f"tp_qknorm_{mode}.json"):
            if mode == "eager" and r["tokens"] not in (1, 128, 512, 1024, 2048, 4096):
                continue
            # the path auto took, as the benchmark recorded it; JSON written before that field existed
            # (2026-11-22b) ran with the default rule: fused up to 2048 tokens on the custom transport
            path = r.get("auto_path") or ("fused" if r["tokens"] <= 2048 else "unfused")
            print(f"| {mode} | {r['q_dim']}/{r['k_dim']} | {r['tokens']} | {f(r['fused'])} | {f(r['unf-nccl'])} | "
                  f"{f(r['unf-ours'])} | {f(r['auto'])} ({path}) | {r['unf-nccl'] / r['auto']:.2f}x |")


def norms(d):
    comp = {}
    for r in json_lines(d, "kanchors.log"):
        if r.get("kernel") == "qknorm_per_head":
            comp[("per_head", r["tokens"], r["hkv"])] = r["compiled_us"]
        elif r.get("kernel") == "qknorm_across_heads":
            comp[("across_heads", r["tokens"], r["hidden"])] = r["compiled_us"]
        elif "rows" in r:
            comp[("rmsnorm", r["rows"], r["hidden"])] = r["rmsnorm_compiled_us"]
            comp[("fused_add", r["rows"], r["hidden"])] = r["add_rmsnorm_compiled_us"]
    print("| kernel | shape | ours, graph (µs) | ours, eager (µs) | floor (µs) | % of floor (graph) | torch.compile (µs) "
          "| target |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in load(d, "kernels-norm.json"):
        k = r.get("kernel")
        if k == "per_head":
            shape = f"{r['tokens']} tok, GQA {r['gqa']}, {r['kv_heads']} kv, hd {r.get('head_dim', 128)}"
            c = comp.get(("per_head", r["tokens"], r["kv_heads"])) if r.get("head_dim", 128) == 128 else None
        elif k == "across_heads":
            shape = f"{r['tokens']} × ({r['q_hidden']} + {r['k_hidden']})"
            c = comp.get(("across_heads", r["tokens"], r["q_hidden"]))
        elif k in ("rmsnorm", "fused_add"):
            shape = f"{r['tokens']} × {r['hidden']}"
            c = comp.get((k, r["tokens"], r["hidden"]))
        else:
            continue
        name = {"per_head": "per-head QK-RMSNorm", "across_heads": "QK-RMSNorm across heads", "rmsnorm": "RMSNorm",
                "fused_add": "fused add + RMSNorm"}[k]
        pct = r["pct_floor_graph"]
        print(f"| {name} | {shape} | {f(r['graph_us'])} | {f(r['eager_us'])} | {f(r['floor_us'])} | "
              f"{pct:.1f} | {f(c, 1)} | {r.get('target') or ''} |")


def gemm(d):
    rows = load(d, "kernels-gemm.json")
    comp = {(r["tokens"], r["hidden"]): r["compiled_us"] for r in json_lines(d, "kanchors.log")
            if r.get("kernel") == "per_token_quant_fp8"}
    print("| FP8 quant | path | per-token graph (µs) | per-token eager (µs) | static-scale graph (µs) | floor (µs) "
          "| torch.compile (µs) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if r.get("section") == "quant":
            print(f"| {r['rows']} × {r['hidden']} | {r['path']} | {f(r['per_token_graph_us'])} | "
                  f"{f(r['per_token_eager_us'])} | {f(r['static_graph_us'])} | {f(r['floor_us'])} | "
                  f"{f(comp.get((r['rows'], r['hidden'])), 1)} |")
    print()
    print("| GEMM k 2304, n 3336 (6 outputs) | m | 6 separate | merged | merged, autotuned | plain cuBLASLt "
          "| weight floor | merged / floor | merged / plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ms = sorted({r["m"] for r in rows if r.get("section") == "gemm"})
    for m in ms:
        by = {r["impl"]: r for r in rows if r.get("section") == "gemm" and r["m"] == m}
        g = lambda i: by[i]["graph_us"]
        print(f"| graph, µs | {m} | {f(g('separate'))} | {f(g('merged'))} | {f(g('merged_autotuned'))} | "
              f"{f(g('plain_cublaslt'))} | {f(by['merged']['floor_us'])} | {g('merged') / by['merged']['floor_us']:.2f}x | "
              f"{g('merged') / g('plain_cublaslt'):.3f} |")
    print()
    print("| square 8192³ bf16 | eager (µs, TFLOP/s) | graph (µs, TFLOP/s) |")
    print("| --- | ---: | ---: |")
    for r in rows:
        if r.get("section") == "square":
            tf = lambda us: 2 * r["m"] * r["n"] * r["k"] / us / 1e6
            print(f"| {r['impl']} | {f(r['eager_us'], 0)} ({tf(r['eager_us']):.0f}) | {f(r['graph_us'], 0)} "
                  f"({r['graph_tflops']:.0f}) |")


if __name__ == "__main__":
    d = sys.argv[1]
    for title, fn in (("all-reduce, graph", lambda: allreduce(d, "graph")), ("all-reduce, eager", lambda: allreduce(d, "eager")),
                      ("tp_qknorm", lambda: qknorm(d)), ("norm kernels", lambda: norms(d)), ("FP8 / GEMM", lambda: gemm(d))):
        print(f"<!-- {title} -->")
        fn()
        print()
