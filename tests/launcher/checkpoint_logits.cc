// The logits of the model in a moe-train checkpoint, for
// hf_checkpoint_roundtrip.py to compare with transformers.
//
//   checkpoint_logits CKPT IDS.npy LOGITS.npy
//
// IDS.npy: int64 or int32 token ids [batch, seq]; LOGITS.npy: fp32
// [batch, seq, vocab]. Exit code 0 on success; 1 with the error on stderr.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "core/io/npy.h"
#include "launcher/checkpoint.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s CKPT IDS.npy LOGITS.npy\n", argv[0]);
    return 1;
  }
  absl::StatusOr<std::unique_ptr<moe::Model>> model = moe::LoadModelFromCheckpoint(argv[1]);
  absl::StatusOr<moe::Tensor> ids = moe::ReadNpy(argv[2]);
  for (const absl::Status& s : {model.status(), ids.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  if (ids->ndim() != 2 || (ids->dtype() != moe::DType::kI64 && ids->dtype() != moe::DType::kI32)) {
    std::fprintf(stderr, "%s: expected integer ids [batch, seq], got %s\n", argv[2],
                 ids->Describe().c_str());
    return 1;
  }
  moe::Tensor ids32 = moe::Tensor::Empty(ids->shape(), moe::DType::kI32);
  for (int64_t i = 0; i < ids->numel(); ++i) {
    ids32.data<int32_t>()[i] = static_cast<int32_t>(ids->GetAsDouble(i));
  }
  if (absl::Status s = moe::WriteNpy(argv[3], (*model)->Logits(ids32)); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
