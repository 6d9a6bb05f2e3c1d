# CPU tests of comm/: topology decisions, tunables, algorithm choice, API argument validation, timeout
# bookkeeping. They need no GPU.
foreach(t test_topo test_param test_choice test_api)
  tpc_add_test(${t} INTERNAL SOURCES ${CMAKE_CURRENT_LIST_DIR}/${t}.c)
endforeach()
