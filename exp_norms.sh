#!/usr/bin/env bash
# temporary: the norm experiment of perf-norms (one device call). Run from .xfer/norms with $OUT set.
cd "$(dirname "$0")" || exit 1
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > $OUT/build.log 2>&1 && ninja -C build tpcomm-bench test_norms >> $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
B=build/bin/tpcomm-bench
T=build/bin/test_norms
( export CUDA_VISIBLE_DEVICES=1
  for v in t1p1h0g0s0 t2p1h2g1s1; do echo "== tests $v"; TPCOMM_NORM_EXP=$v timeout 60 $T --jobs 4 2>&1 | grep -E "Synthesis|FAIL|wrong|Assert"; echo "rc=$?"; done
  echo "== tests t2p1h1g1 per_head"; TPCOMM_NORM_EXP=t2p1h1g1 timeout 40 $T --filter 'norms_gpu/per_head*' 2>&1 | grep -E "Synthesis|FAIL|wrong"
  for f in per_head_decode_shapes rmsnorm_in_place first_calls_inside_graph_capture; do echo "== memcheck $f t2p1h2g1s1"; TPCOMM_NORM_EXP=t2p1h2g1s1 timeout 40 compute-sanitizer --tool memcheck --error-exitcode 9 $T --filter "norms_gpu/$f" 2>&1 | grep -E "Synthesis|ERROR SUMMARY"; echo "rc=${PIPESTATUS[0]}"; done
  echo "== memcheck per_head_decode_shapes default"; timeout 40 compute-sanitizer --tool memcheck --error-exitcode 9 $T --filter "norms_gpu/per_head_decode_shapes" 2>&1 | grep -E "Synthesis|ERROR SUMMARY"; echo "rc=${PIPESTATUS[0]}"
) > $OUT/tests.log 2>&1 &
export CUDA_VISIBLE_DEVICES=0
nvidia-smi --query-gpu=index,name,clocks.sm,clocks.mem --format=csv,noheader > $OUT/exp.log 2>&1
for v in t0p0h0g0s0 t1p0h0g0s0 t1p1h0g0s0 t2p1h0g0s0 t1p1h0g0s1; do
  echo "== $v all"; TPCOMM_NORM_EXP=$v timeout 25 $B kernels-norm 2>&1; echo "rc=$?"
done >> $OUT/exp.log
for v in t1p1h1g0s0 t1p1h2g0s0 t1p1h1g0s1 t1p1h0g1s0 t2p1h0g1s0 t2p1h2g1s0 t0p0h0g0s0; do
  echo "== $v per_head"; TPCOMM_NORM_EXP=$v timeout 12 $B kernels-norm -k per_head 2>&1; echo "rc=$?"
done >> $OUT/exp.log
for v in t0p0h0g0s0 t1p1h0g0s0; do
  echo "== $v rows repeat"; TPCOMM_NORM_EXP=$v timeout 20 $B kernels-norm -k across_heads,rmsnorm,fused_add 2>&1; echo "rc=$?"
done >> $OUT/exp.log
wait
grep -E "^==|^ *(per_head|across|rmsnorm|fused)|rc=|copy bandwidth" $OUT/exp.log | awk '{ if ($1 ~ /^(per_head|across|rmsnorm|fused)/) print $1, $2, "e=" $6, "g=" $8, $9 "%", "w=" $12, $13, $14; else print }'
cat $OUT/tests.log
