# tests/launcher — tpcomm-run (run as a real binary through TPC_TEST_LAUNCHER, with CPU-only programs and
# -n N so it works without a GPU) and the NUMA helpers of comm/numa.c (checked against libnuma).
tpc_add_test(test_launcher SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_launcher.c LIBS ${NUMA_LIBRARY})
target_include_directories(test_launcher PRIVATE ${NUMA_INCLUDE_DIR})
add_dependencies(test_launcher tpcomm-run) # TPC_TEST_LAUNCHER names it; make sure it is built
