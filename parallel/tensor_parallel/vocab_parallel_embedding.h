// Vocab-parallel token embedding (Megatron-Core's VocabParallelEmbedding):
// the table [vocab, dim] is split by rows over the TP group, rank r holding
// ids [r vocab/TP, (r+1) vocab/TP). Each rank looks up the ids it holds and
// writes zeros for the others; the sum over TP is the embedding.
//
//   without SP: ids [...] -> out [..., dim] (all-reduce)
//   with SP:    ids [batch, seq] -> out [batch, seq/TP, dim] (reduce-scatter
//               to this rank's sequence shard)
//
// ids are the same on every TP rank. CPU, kF32 or kF64.
// Gradient rule: weight.grad += (only this rank's rows; deterministic).
#ifndef MOE_PARALLEL_TENSOR_PARALLEL_VOCAB_PARALLEL_EMBEDDING_H_
#define MOE_PARALLEL_TENSOR_PARALLEL_VOCAB_PARALLEL_EMBEDDING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/parameter.h"
#include "parallel/communicator.h"

namespace moe {

class VocabParallelEmbedding {
 public:
  // What backward needs: which rows were read.
  struct Saved {
    Tensor ids;
  };

  // weight "<name>.weight" is this rank's rows of the whole [vocab, dim]
  // table (weight().slice says which), left uninitialised. vocab must be
  // divisible by tp->size() (pad it, as Megatron's
  // --make_vocab_size_divisible_by does).
  VocabParallelEmbedding(std::string name, int64_t vocab, int64_t dim, Communicator* tp,
                         bool sequence_parallel, DType dtype = DType::kF32,
                         Device device = Device::kCpu);

  // ids: kI32; an id outside [0, vocab) is a fatal error naming it.
  Tensor Forward(const Tensor& ids, Saved* saved) const;
  // dout: like Forward's output.
  void Backward(const Tensor& dout, const Saved& saved);

  Parameter& weight() { return weight_; }
  std::vector<Parameter*> Parameters() { return {&weight_}; }
  int64_t vocab() const { return vocab_; }  // whole
  int64_t dim() const { return dim_; }
  int64_t vocab_begin() const { return weight_.slice.offsets[0]; }
  int64_t local_vocab() const { return weight_.value.dim(0); }

 private:
  int64_t vocab_;
  int64_t dim_;
  Communicator* tp_;
  bool sequence_parallel_;
  Parameter weight_;
};

}  // namespace moe

#endif  // MOE_PARALLEL_TENSOR_PARALLEL_VOCAB_PARALLEL_EMBEDDING_H_
