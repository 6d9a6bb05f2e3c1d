# world-size-1 tp_qk_rmsnorm check + A/B on one GPU (2026-12-05)
set -uo pipefail
export NCCL_NVLS_ENABLE=0
B=build/bin
t0=$(date +%s)
nvidia-smi -L > $OUT/w1.log 2>&1
date -u >> $OUT/w1.log
(cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C build) > $OUT/build.log 2>&1 || { echo BUILD FAILED; tail -40 $OUT/build.log; exit 1; }
echo "build done in $(( $(date +%s) - t0 )) s" >> $OUT/w1.log
{
  echo "### test_qknorm_gpu world_size_one"
  timeout 200 $B/test_qknorm_gpu --jobs 1 --verbose=1 --filter '*/world_size_one'; echo "rc=$?"
  echo "### worker direct (full, not quick)"
  timeout 200 $B/tpcomm-run -n 1 $B/tpc_qk_worker 2>&1 | tail -30; echo "rc=$?"
  echo "### bench graph"
  timeout 120 $B/tpcomm-run -n 1 $B/tpcomm-bench tp_qknorm --graph -t 16384 --json $OUT/w1_graph.json; echo "rc=$?"
  echo "### bench graph -c 0 (repeat)"
  timeout 120 $B/tpcomm-run -n 1 $B/tpcomm-bench tp_qknorm --graph -c 0 -t 16384 --json $OUT/w1_graph_rep.json; echo "rc=$?"
  echo "### bench eager"
  timeout 120 $B/tpcomm-run -n 1 $B/tpcomm-bench tp_qknorm -t 16384 --json $OUT/w1_eager.json; echo "rc=$?"
} >> $OUT/w1.log 2>&1
left=$(( 480 - ($(date +%s) - t0) ))
echo "ctest with ${left}s left" >> $OUT/w1.log
if [ $left -gt 60 ]; then timeout $left ctest --test-dir build --output-on-failure -E install_package > $OUT/ctest.log 2>&1; echo "ctest rc=$?" >> $OUT/w1.log; tail -25 $OUT/ctest.log >> $OUT/w1.log; fi
