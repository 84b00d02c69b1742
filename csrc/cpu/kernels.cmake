# pyddpm_kernels: the CPU kernels (the reverse step; GroupNorm, LogSigmoid, SiLU and dropout for the fast
# networks) as a static library (OpenMP when available). Included by the top-level CMakeLists.txt and by
# export/CMakeLists.txt when the C++ sampler is built on its own.
# -ffp-contract=off makes every float operation one IEEE rounding, so the noise and the step are bit-exact
# with the CUDA kernel, torch and numpy.
add_library(pyddpm_kernels STATIC "${CMAKE_CURRENT_LIST_DIR}/reverse_step_cpu.cpp"
            "${CMAKE_CURRENT_LIST_DIR}/group_norm_cpu.cpp" "${CMAKE_CURRENT_LIST_DIR}/log_sigmoid_cpu.cpp"
            "${CMAKE_CURRENT_LIST_DIR}/dropout_cpu.cpp"
            "${CMAKE_CURRENT_LIST_DIR}/silu_cpu.cpp")
set_target_properties(pyddpm_kernels PROPERTIES CXX_STANDARD 17 POSITION_INDEPENDENT_CODE ON)
target_include_directories(pyddpm_kernels PUBLIC "${CMAKE_CURRENT_LIST_DIR}/..")
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(pyddpm_kernels PRIVATE -ffp-contract=off -fno-math-errno)
  # exp_nonpositive (float -> int) vectorises only without trapping-math; it raises no floating-point
  # exceptions anyone reads. The GroupNorm, LogSigmoid and SiLU need no bit-exactness, and run faster with fused
  # multiply-adds (-ffp-contract=fast, after the =off above; as accurate; commit 090fb21).
  set_source_files_properties("${CMAKE_CURRENT_LIST_DIR}/group_norm_cpu.cpp"
                              "${CMAKE_CURRENT_LIST_DIR}/log_sigmoid_cpu.cpp"
                              "${CMAKE_CURRENT_LIST_DIR}/silu_cpu.cpp" PROPERTIES
                              COMPILE_OPTIONS "-fno-trapping-math;-ffp-contract=fast")
endif()
find_package(OpenMP COMPONENTS CXX)
if(OpenMP_CXX_FOUND)
  target_link_libraries(pyddpm_kernels PUBLIC OpenMP::OpenMP_CXX)
endif()
