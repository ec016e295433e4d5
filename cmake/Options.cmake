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
