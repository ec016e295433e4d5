// Token embedding (Mixtral's model.embed_tokens): out[..., :] = weight[id, :].
// CPU only for now.
#ifndef MOE_CORE_LAYERS_EMBEDDING_H_
#define MOE_CORE_LAYERS_EMBEDDING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/parameter.h"

namespace moe {

class Embedding {
 public:
  // What backward needs: which rows were read.
  struct Saved {
    Tensor ids;
  };

  // weight "<name>.weight" [vocab, dim] is left uninitialised (the model
  // fills it with Philox or loads it); its grad starts at zero.
  Embedding(std::string name, int64_t vocab, int64_t dim, DType dtype = DType::kF32,
            Device device = Device::kCpu);

  // ids: kI32 [...] -> out [..., dim]. An id outside [0, vocab) is a fatal
  // error naming the id, its position and the vocab size.
  Tensor Forward(const Tensor& ids, Saved* saved) const;
  // dout: [..., dim]; weight.grad += (rows of repeated ids accumulate).
  // Deterministic: the same bits for any thread count.
  void Backward(const Tensor& dout, const Saved& saved);

  Parameter& weight() { return weight_; }
  std::vector<Parameter*> Parameters() { return {&weight_}; }
  int64_t vocab() const { return vocab_; }
  int64_t dim() const { return dim_; }

 private:
  int64_t vocab_;
  int64_t dim_;
  Parameter weight_;
};

}  // namespace moe

#endif  // MOE_CORE_LAYERS_EMBEDDING_H_
