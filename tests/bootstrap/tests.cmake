# tests/bootstrap — the bootstrap (comm/bootstrap.c): unique id, Unix-socket and callback transports; no GPU.
tpc_add_test(test_bootstrap INTERNAL SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_bootstrap.c)
