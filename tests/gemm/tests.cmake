# FP8 quantization and cuBLASLt GEMMs (include/tpcomm/gemm.h): CPU references and argument checks run
# everywhere; the GPU cases skip with the reason on machines without a GPU.
tpc_add_test(test_gemm SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_gemm.c ${CMAKE_SOURCE_DIR}/tests/ref/quant_ref.c
             ${CMAKE_SOURCE_DIR}/tests/ref/gemm_ref.c LIBS m TIMEOUT 1800)
