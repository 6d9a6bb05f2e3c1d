# The installed package works for an outside project (CMake package and pkg-config).
add_test(NAME install_package COMMAND ${CMAKE_CURRENT_LIST_DIR}/check_install.sh ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
set_tests_properties(install_package PROPERTIES TIMEOUT 300)
