# tests/norms — the norm kernels of include/tpcomm/kernels.h: argument validation (no GPU needed, runs in CI)
# and GPU correctness against the CPU references of tests/ref/norm_ref.c (skipped without a GPU).
tpc_add_test(test_norms SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_norms.c ${CMAKE_SOURCE_DIR}/tests/ref/norm_ref.c
             LIBS m TIMEOUT 900)
