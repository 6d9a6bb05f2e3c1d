"""PyTorch baselines for the RMSNorm and fused add+RMSNorm shapes of `tpcomm-bench kernels-norm` (the
shared anchor scripts cover only the QK-norm shapes): torch.compile and eager, bf16, median of
triton.testing.do_bench, printed as JSON lines. Run on the GPU machine beside the benchmark."""
import json

import torch
import torch.nn.functional as F
from triton.testing import do_bench


def us(fn):
    return do_bench(fn, warmup=50, rep=300, return_mode="median") * 1e3


def rms(x, w):
    return F.rms_norm(x, (x.shape[-1],), w, 1e-6)


def add_rms(x, r, w):
    r = x + r
    return F.rms_norm(r, (r.shape[-1],), w, 1e-6), r


rms_c = torch.compile(rms, dynamic=False)
add_rms_c = torch.compile(add_rms, dynamic=False)
for rows, hidden in ((1, 4096), (1024, 4096), (8192, 8192), (4096, 16384), (16384, 16384)):
    x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    out = dict(rows=rows, hidden=hidden)
    out["rmsnorm_compiled_us"] = round(us(lambda: rms_c(x, w)), 2)
    out["rmsnorm_eager_us"] = round(us(lambda: rms(x, w)), 2)
    out["add_rmsnorm_compiled_us"] = round(us(lambda: add_rms_c(x, r, w)), 2)
    out["add_rmsnorm_eager_us"] = round(us(lambda: add_rms(x, r, w)), 2)
    print(json.dumps(out), flush=True)
