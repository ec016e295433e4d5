# Build options. Each one can be set on the cmake command line with -D.
option(MOE_WERROR "Treat compiler warnings as errors (CI sets this)" OFF)
option(MOE_BUILD_TESTS "Build the GoogleTest suites" ON)
option(MOE_BUILD_BENCH "Build the benchmarks in bench/" ON)
# AUTO builds the CUDA part whenever nvcc is found; ON requires it; OFF skips it.
set(MOE_CUDA AUTO CACHE STRING "Build the CUDA backend: AUTO, ON or OFF")
set_property(CACHE MOE_CUDA PROPERTY STRINGS AUTO ON OFF)
# Python interpreter with torch/transformers/safetensors/numpy for the reference checks.
set(MOE_PYTHON "$ENV{HOME}/.cache/moe-train/venv/bin/python" CACHE FILEPATH
    "Python with torch, transformers, safetensors and numpy (scripts/install-deps.sh makes it)")
# Our own CPU kernels (SwiGLU, softmax, attention, norms, AdamW) vectorise for
# the build machine's instruction set (AVX2 + FMA on current x86 servers)
# instead of baseline SSE2. OpenBLAS picks its kernels at run time either way.
# Turn it off to build binaries for a cluster whose nodes differ from this one.
option(MOE_NATIVE_ARCH "Compile the C++ code with -march=native" ON)
