# tests/mpi — libtpcomm_mpi under mpirun: 2 ranks on this host, shared memory only, no GPU. A plain C
# program (not Criterion) that prints "N passed, N failed" and exits non-zero on failure.
# mpirun flags: --oversubscribe (hosts with fewer cores than ranks), --bind-to none and
# btl_vader_single_copy_mechanism=none (containers that forbid binding or cross-process memory access),
# plm_rsh_agent=false (a local launch that does not need ssh, absent from many containers).
# OMPI_ALLOW_RUN_AS_ROOT*: mpirun refuses to run as root (CI containers) without them.
if(TPC_HAVE_MPI)
  add_executable(test_mpi_bootstrap ${CMAKE_CURRENT_LIST_DIR}/test_mpi_bootstrap.c)
  target_include_directories(test_mpi_bootstrap PRIVATE ${CMAKE_SOURCE_DIR}/comm)
  target_link_libraries(test_mpi_bootstrap PRIVATE tpcomm_mpi tpcomm MPI::MPI_C)
  if(MPIEXEC_EXECUTABLE)
    set(TPC_MPIRUN ${MPIEXEC_EXECUTABLE})
  else()
    set(TPC_MPIRUN mpirun)
  endif()
  add_test(NAME test_mpi_bootstrap
    COMMAND ${TPC_MPIRUN} -np 2 --oversubscribe --bind-to none --mca btl self,vader
            --mca btl_vader_single_copy_mechanism none --mca plm_rsh_agent false
            $<TARGET_FILE:test_mpi_bootstrap>)
  set_tests_properties(test_mpi_bootstrap PROPERTIES
    TIMEOUT 120
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
    FAIL_REGULAR_EXPRESSION "FAIL ")
endif()
