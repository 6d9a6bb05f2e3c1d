# GPU tests: the all-reduce worker (one rank, started by tpcomm-run or mpirun) and the Criterion driver
# that launches it. Without a GPU every case skips with the reason.
add_executable(tpc_ar_worker ${CMAKE_CURRENT_LIST_DIR}/ar_worker.c)
target_link_libraries(tpc_ar_worker PRIVATE tpc_testutil tpcomm m)
if(TPC_HAVE_MPI)
  target_link_libraries(tpc_ar_worker PRIVATE tpcomm_mpi MPI::MPI_C)
  target_compile_definitions(tpc_ar_worker PRIVATE TPC_HAVE_MPI=1)
endif()
tpc_add_test(test_allreduce_gpu SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_allreduce_gpu.c TIMEOUT 1800)
target_compile_definitions(test_allreduce_gpu PRIVATE TPC_HAVE_MPI=${TPC_HAVE_MPI} TPC_MPIRUN="${MPIEXEC_EXECUTABLE}")
add_dependencies(test_allreduce_gpu tpc_ar_worker tpcomm-run)

# TP QK-RMSNorm: worker + driver
add_executable(tpc_qk_worker ${CMAKE_CURRENT_LIST_DIR}/qk_worker.c)
target_link_libraries(tpc_qk_worker PRIVATE tpc_testutil tpcomm m) # tpc_testutil: tests/ref's headers too
tpc_add_test(test_qknorm_gpu SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_qknorm_gpu.c TIMEOUT 1800)
add_dependencies(test_qknorm_gpu tpc_qk_worker tpcomm-run)
