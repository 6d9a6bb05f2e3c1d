#!/usr/bin/env bash
# run_device.sh — everything a GPU machine run needs, in one call (device time is short):
#   bash bench/run_device.sh topo build test shared bench anchors sass
# Each step logs to $OUT/<step>.log and prints a short summary; a failing step does not stop the others.
# Expects .devdeps (../shared/device/fetch-deps.sh) in the tree and `source .devdeps/prelude.sh` first.
set -uo pipefail
OUT=${OUT:-/tmp/tpcomm-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
B=build/bin

step_topo() { # the machine's GPUs and links (issues 7 and 8 want it in the note); the probe's decision is the
  # "# tpcomm: ..., transport ... (reason)" header line of every benchmark
  nvidia-smi -L && nvidia-smi topo -m || return 1
  nvidia-smi nvlink --status 2>/dev/null | head -40 || true
}
step_build() {
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C build
}
step_test() {
  ctest --test-dir build --output-on-failure -E install_package
}
step_shared() { # 4 and 8 ranks on the GPUs, under MPS
  source .devdeps/mps.sh start
  TPCOMM_TEST_SHARED=1 $B/test_allreduce_gpu --jobs 1 --verbose=1 --filter '*/*sharing*'
  local rc=$?
  TPCOMM_TEST_SHARED=1 $B/test_allreduce_gpu --jobs 1 --verbose=1 --filter '*/four_ranks_graph*' || rc=1
  TPCOMM_TEST_SHARED=1 $B/test_qknorm_gpu --jobs 1 --verbose=1 --filter '*/*sharing*' || rc=1
  .devdeps/mps.sh stop
  return $rc
}
step_bench() {
  local n=${BENCH_RANKS:-$ngpu} args=${BENCH_ARGS:--b 8 -e 256M -f 2} eager=${BENCH_EAGER_ARGS:--b 8 -e 256M -f 4}
  $B/tpcomm-run -n "$n" $B/tpcomm-bench allreduce $args --graph --json "$OUT/allreduce_graph.json" &&
    $B/tpcomm-run -n "$n" $B/tpcomm-bench allreduce $eager --json "$OUT/allreduce_eager.json"
}
step_variants() { # tuning: grid size and PDL, graph mode, custom algorithms only
  local n=${BENCH_RANKS:-$ngpu}
  for nb in ${VARIANT_BLOCKS:-16 32 66}; do
    echo "### TPCOMM_NUM_BLOCKS=$nb"
    TPCOMM_NUM_BLOCKS=$nb $B/tpcomm-run -n "$n" $B/tpcomm-bench allreduce -b 1K -e 64M -f 4 -n 50 --graph -c 0 --impl oneshot,twoshot | grep -E "^\[0\] +[0-9]"
  done
  echo "### TPCOMM_PDL=0"
  TPCOMM_PDL=0 $B/tpcomm-run -n "$n" $B/tpcomm-bench allreduce -b 1K -e 64K -f 4 -n 50 --graph -c 0 --impl oneshot | grep -E "^\[0\] +[0-9]"
}
step_qkbench() {
  local n=${BENCH_RANKS:-$ngpu}
  $B/tpcomm-run -n "$n" $B/tpcomm-bench tp_qknorm --graph --json "$OUT/tp_qknorm_graph.json" &&
    $B/tpcomm-run -n "$n" $B/tpcomm-bench tp_qknorm --json "$OUT/tp_qknorm_eager.json"
}
step_mpibench() {
  mpirun -np "$ngpu" --oversubscribe --bind-to none --mca btl self,vader --mca plm_rsh_agent false -x NCCL_NVLS_ENABLE \
    $B/tpcomm-bench allreduce ${MPI_BENCH_ARGS:--b 8 -e 256M -f 4} --graph
}
step_kbench() { # single-GPU kernels (device 0)
  $B/tpcomm-bench kernels --json "$OUT/kernels"
}
step_kanchors() { # PyTorch baselines of the single-GPU kernels, same machine, same call
  PYTHONUNBUFFERED=1 python3 .devdeps/anchor_kernels_compiled.py
  PYTHONUNBUFFERED=1 python3 bench/torch_rmsnorm_baseline.py
}
step_sanitizer() { # compute-sanitizer memcheck: a 2-rank all-reduce run and the norm kernels' GPU tests
  compute-sanitizer --tool memcheck --target-processes all --error-exitcode 9 \
    $B/tpcomm-run -n "$ngpu" $B/tpc_ar_worker streams
  local r=$?
  compute-sanitizer --tool memcheck --error-exitcode 9 $B/test_norms --jobs 1 --filter 'norms_gpu/*' || r=1
  return $r
}
step_anchors() {
  PYTHONUNBUFFERED=1 python3 .devdeps/anchor_allreduce.py
}
step_sass() {
  cuobjdump -sass build/lib/libtpcomm.so | grep -E "Function|STG.E.128|LDG.E.128|LD.E.128|ST.E.128|LDL|STL" | sort | uniq -c | sort -rn | head -40
}

if [ "${1:-}" = "--step" ]; then # one step, run under timeout(1) by the loop below
  "step_$2"
  exit $?
fi

rc=0
for s in "$@"; do
  t0=$(date +%s)
  limit_var="LIMIT_$s"
  # timeout(1) signals its whole process group: launcher, ranks and test binaries included
  timeout -k 5 "${!limit_var:-300}" bash "$0" --step "$s" > "$OUT/$s.log" 2>&1
  r=$?
  [ $r -eq 124 ] && echo "=== $s: time limit ${!limit_var:-300} s reached, killed" >> "$OUT/$s.log"
  [ $r -eq 0 ] || rc=1
  echo "=== $s: exit $r in $(( $(date +%s) - t0 )) s"
  case $s in
    build) grep -E "error|warning.*(spill|[Ll]ocal memory)" "$OUT/$s.log" | sed -E 's/_ZN[0-9]+_GLOBAL__N__[0-9a-f]+_[0-9]+_//' | head -20 ;;
    test) grep -E "tests passed|Failed|\*\*\*|time limit" "$OUT/$s.log" | head -40 ;;
    shared) grep -E "Synthesis|FAIL|failed|Assertion|time limit" "$OUT/$s.log" | head -20 ;;
    *) tail -n 60 "$OUT/$s.log" ;;
  esac
done
exit $rc
