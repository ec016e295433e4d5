// Fatal checks for CUDA runtime and cuBLAS calls, in the style of MOE_CHECK:
//
//   CUDA_CHECK(cudaMalloc(&ptr, bytes)) << "allocating " << bytes << " bytes";
//
// On failure they report the file, line, the call as written and the
// library's name and description of the error, then any streamed message, and
// abort. A CUDA error is a broken device or a programming error, never bad user
// input, so there is nothing to recover.
#ifndef MOE_CORE_OPS_CUDA_CUDA_CHECK_H_
#define MOE_CORE_OPS_CUDA_CUDA_CHECK_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/check.h"

// The for statement binds the status to a name so the call runs once; its body
// is a CheckFailure temporary whose destructor aborts, so it never loops.
#define CUDA_CHECK(call)                                                                    \
  for (const cudaError_t moe_cuda_status_ = (call); moe_cuda_status_ != cudaSuccess;)       \
  ::moe::internal::CheckFailure(__FILE__, __LINE__, #call)                                  \
      << cudaGetErrorName(moe_cuda_status_) << " (" << cudaGetErrorString(moe_cuda_status_) \
      << ") "

#define CUBLAS_CHECK(call)                                 \
  for (const cublasStatus_t moe_cublas_status_ = (call);   \
       moe_cublas_status_ != CUBLAS_STATUS_SUCCESS;)       \
  ::moe::internal::CheckFailure(__FILE__, __LINE__, #call) \
      << cublasGetStatusName(moe_cublas_status_) << " ("   \
      << cublasGetStatusString(moe_cublas_status_) << ") "

// Reports a failed kernel launch (bad configuration, no device) at the launch
// site rather than at the next synchronisation.
#define CUDA_CHECK_LAUNCH(kernel_name) CUDA_CHECK(cudaGetLastError()) << "launching " << kernel_name

#endif  // MOE_CORE_OPS_CUDA_CUDA_CHECK_H_
