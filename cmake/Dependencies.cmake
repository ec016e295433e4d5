# Finds every dependency once. Debian packages (scripts/install-deps.sh) for the
# CPU side; the CUDA toolkit already on the machine for the GPU side.

find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(absl REQUIRED CONFIG)
find_package(Threads REQUIRED)

# OpenBLAS: we link the OpenMP build explicitly. Its GEMMs called from inside
# our own OpenMP regions (per attention block, per expert) then run on one
# thread instead of spawning a second pool that fights ours for the cores.
find_path(MOE_CBLAS_INCLUDE_DIR cblas.h
  HINTS /usr/include/x86_64-linux-gnu/openblas-openmp
        /usr/include/aarch64-linux-gnu/openblas-openmp
        /usr/include/openblas
  NO_DEFAULT_PATH)
find_library(MOE_OPENBLAS_LIBRARY openblas
  HINTS /usr/lib/x86_64-linux-gnu/openblas-openmp
        /usr/lib/aarch64-linux-gnu/openblas-openmp
  NO_DEFAULT_PATH)
if(NOT MOE_CBLAS_INCLUDE_DIR OR NOT MOE_OPENBLAS_LIBRARY)
  message(FATAL_ERROR
    "OpenBLAS (OpenMP build) not found. Run scripts/install-deps.sh, which installs "
    "libopenblas-dev and libopenblas-openmp-dev.")
endif()
add_library(moe_openblas INTERFACE)
target_include_directories(moe_openblas INTERFACE ${MOE_CBLAS_INCLUDE_DIR})
target_link_libraries(moe_openblas INTERFACE ${MOE_OPENBLAS_LIBRARY} OpenMP::OpenMP_CXX)

# MPI (OpenMPI from Debian) for multi-rank runs on CPU tensors. Optional so
# that a GPU machine without Debian packages can still build the core: the
# MPI communicator and the multi-rank tests are then left out.
find_package(MPI COMPONENTS CXX)
set(MOE_WITH_MPI ${MPI_CXX_FOUND})
message(STATUS "moe: MPI ${MOE_WITH_MPI}")
if(MOE_WITH_MPI)
  # mpirun refuses to start as root without these; the tests run as root in CI.
  set(MOE_MPIEXEC ${MPIEXEC_EXECUTABLE} --oversubscribe --allow-run-as-root)
endif()

# prometheus-cpp (Debian prometheus-cpp-dev) serves --metrics_port. Optional
# like MPI, for a GPU machine without Debian packages: MetricsServer is then
# a stand-in whose Start() says how to get it.
find_package(prometheus-cpp CONFIG QUIET)
if(prometheus-cpp_FOUND AND TARGET prometheus-cpp::pull)
  set(MOE_WITH_PROMETHEUS ON)
else()
  set(MOE_WITH_PROMETHEUS OFF)
endif()
message(STATUS "moe: prometheus-cpp ${MOE_WITH_PROMETHEUS}")

if(MOE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(MOE_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()

# CUDA: built whenever nvcc is present (MOE_CUDA=AUTO), for Hopper by default.
set(MOE_WITH_CUDA OFF)
if(NOT MOE_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # CMake's default is an old architecture; our kernels target H100.
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    # One CUDA runtime per process: the shared one, which cuBLAS also uses.
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(MOE_WITH_CUDA ON)
  elseif(MOE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "MOE_CUDA=ON but no CUDA compiler (nvcc) was found. "
      "Put the CUDA toolkit's bin/ on PATH or configure with -DMOE_CUDA=OFF.")
  endif()
endif()
message(STATUS "moe: CUDA backend ${MOE_WITH_CUDA}")
