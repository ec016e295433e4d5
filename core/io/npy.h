// NumPy .npy files (format versions 1.0, 2.0 and 3.0), for token ids and
// logits exchanged with Python:
//
//   "\x93NUMPY" | major | minor | header length (u16 LE in 1.0, u32 LE after)
//   | header: a Python dict literal {'descr': '<f4', 'fortran_order': False,
//     'shape': (2, 3), } padded with spaces and a newline | the data
//
// ReadNpy loads C-order arrays of '<f4' (kF32), '<f8' (kF64), '<i4' (kI32)
// and '<i8' (kI64) as they are, and widens the smaller integer types that
// token files use: '|u1', '|i1', '<i2', '<u2' -> kI32, '<u4' and '<u8' ->
// kI64 (a u64 value above INT64_MAX is an error). Big-endian ('>') variants
// are byte-swapped. Anything else (float16, bool, structured, object,
// Fortran order) is refused with a message naming what the file holds.
#ifndef MOE_CORE_IO_NPY_H_
#define MOE_CORE_IO_NPY_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace moe {

absl::StatusOr<Tensor> ReadNpy(const std::string& path);

// Writes a tensor (any device) of kF32, kF64, kI32 or kI64 as format 1.0
// (2.0 when the header needs it), exactly as numpy.save would. kBF16 is
// refused: NumPy has no bfloat16, so Cast to kF32 first. The write is atomic.
absl::Status WriteNpy(const std::string& path, const Tensor& t);

}  // namespace moe

#endif  // MOE_CORE_IO_NPY_H_
