#include "moe/expert_tensor_exchange.h"

#include <cstring>

#include "core/check.h"

namespace moe {
namespace {

int64_t RowBytes(const Tensor& t) {
  return (t.dim(0) > 0 ? t.numel() / t.dim(0) : 0) * static_cast<int64_t>(DTypeSize(t.dtype()));
}

}  // namespace

ExpertTensorExchange::ExpertTensorExchange(Communicator* etp, int64_t local_experts)
    : etp_(etp), local_experts_(local_experts) {
  MOE_CHECK(etp != nullptr && local_experts >= 1)
      << "ExpertTensorExchange: needs a group and >= 1 local expert";
}

Tensor ExpertTensorExchange::GatherLike(const Tensor& rows_RH, const Layout& layout) const {
  const int p = etp_->size(), me = etp_->rank();
  const int64_t el = local_experts_;
  const int64_t row = RowBytes(rows_RH);
  int64_t mine = 0;
  for (int64_t e = 0; e < el; ++e) mine += layout.counts[me * el + e];
  MOE_CHECK(rows_RH.ndim() == 2 && rows_RH.dim(0) == mine)
      << "ExpertTensorExchange: " << rows_RH.Describe() << " is not this rank's " << mine
      << " rows";
  // Every peer gets all of this rank's rows.
  Shape sent_shape = rows_RH.shape();
  sent_shape[0] = mine * p;
  Tensor sent = Tensor::Empty(sent_shape, rows_RH.dtype());
  for (int q = 0; q < p; ++q) {
    if (mine > 0) {
      std::memcpy(static_cast<char*>(sent.raw_data()) + q * mine * row, rows_RH.raw_data(),
                  static_cast<size_t>(mine * row));
    }
  }
  Tensor received;
  std::vector<int64_t> received_counts;
  etp_->AllToAllV(&received, &received_counts, sent, std::vector<int64_t>(p, mine))->Wait();
  // received: [source][local expert] -> [local expert][source].
  std::vector<int64_t> start(static_cast<size_t>(p * el));
  int64_t at = 0;
  for (int s = 0; s < p; ++s) {
    for (int64_t e = 0; e < el; ++e) {
      start[s * el + e] = at;
      at += layout.counts[s * el + e];
    }
  }
  Tensor gathered = Tensor::Empty(received.shape(), received.dtype());
  int64_t out = 0;
  for (int64_t e = 0; e < el; ++e) {
    for (int s = 0; s < p; ++s) {
      const int64_t n = layout.counts[s * el + e];
      if (n > 0) {
        std::memcpy(static_cast<char*>(gathered.raw_data()) + out * row,
                    static_cast<const char*>(received.raw_data()) + start[s * el + e] * row,
                    static_cast<size_t>(n * row));
      }
      out += n;
    }
  }
  return gathered;
}

Tensor ExpertTensorExchange::Gather(const Tensor& rows_RH, const std::vector<int64_t>& offsets,
                                    Layout* layout, std::vector<int64_t>* gathered_offsets) const {
  const int p = etp_->size();
  const int64_t el = local_experts_;
  MOE_CHECK(static_cast<int64_t>(offsets.size()) == el + 1)
      << "ExpertTensorExchange: offsets must have local experts + 1 entries";
  // Every rank's per-expert counts, so each can place what arrives.
  Tensor mine = Tensor::Empty({el}, DType::kI64);
  for (int64_t e = 0; e < el; ++e) mine.data<int64_t>()[e] = offsets[e + 1] - offsets[e];
  Tensor all = Tensor::Empty({p * el}, DType::kI64);
  etp_->AllGather(all, mine)->Wait();
  layout->counts.assign(all.data<int64_t>(), all.data<int64_t>() + p * el);
  gathered_offsets->assign(static_cast<size_t>(el) + 1, 0);
  for (int64_t e = 0; e < el; ++e) {
    int64_t rows = 0;
    for (int s = 0; s < p; ++s) rows += layout->counts[s * el + e];
    (*gathered_offsets)[e + 1] = (*gathered_offsets)[e] + rows;
  }
  return GatherLike(rows_RH, *layout);
}

Tensor ExpertTensorExchange::ScatterSum(const Tensor& full_RH, const Layout& layout) const {
  const int p = etp_->size(), me = etp_->rank();
  const int64_t el = local_experts_;
  const int64_t row = RowBytes(full_RH);
  // [local expert][source] -> [source][local expert]: source s's block goes back to s.
  std::vector<int64_t> per_source(static_cast<size_t>(p), 0);
  std::vector<int64_t> start(static_cast<size_t>(p * el));
  for (int s = 0; s < p; ++s) {
    for (int64_t e = 0; e < el; ++e) per_source[s] += layout.counts[s * el + e];
  }
  int64_t at = 0;
  for (int s = 0; s < p; ++s) {
    for (int64_t e = 0; e < el; ++e) {
      start[s * el + e] = at;
      at += layout.counts[s * el + e];
    }
  }
  MOE_CHECK(full_RH.ndim() == 2 && full_RH.dim(0) == at)
      << "ExpertTensorExchange: " << full_RH.Describe() << " is not the " << at << " gathered rows";
  Tensor sent = Tensor::Empty(full_RH.shape(), full_RH.dtype());
  int64_t in = 0;
  for (int64_t e = 0; e < el; ++e) {
    for (int s = 0; s < p; ++s) {
      const int64_t n = layout.counts[s * el + e];
      if (n > 0) {
        std::memcpy(static_cast<char*>(sent.raw_data()) + start[s * el + e] * row,
                    static_cast<const char*>(full_RH.raw_data()) + in * row,
                    static_cast<size_t>(n * row));
      }
      in += n;
    }
  }
  Tensor received;
  std::vector<int64_t> received_counts;
  etp_->AllToAllV(&received, &received_counts, sent, per_source)->Wait();
  // received: one copy of this rank's rows from every peer, in peer order: sum them.
  const int64_t mine = per_source[me];
  Shape shape = full_RH.shape();
  shape[0] = mine;
  Tensor sum = Tensor::Empty(shape, full_RH.dtype());
  const int64_t n = mine * (full_RH.dim(0) > 0 ? full_RH.numel() / full_RH.dim(0) : 0);
  if (full_RH.dtype() == DType::kF64) {
    const double* r = received.data<double>();
    double* out = sum.data<double>();
    for (int64_t i = 0; i < n; ++i) {
      double acc = 0;
      for (int q = 0; q < p; ++q) acc += r[q * n + i];
      out[i] = acc;
    }
  } else {
    const float* r = received.data<float>();
    float* out = sum.data<float>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      float acc = 0;
      for (int q = 0; q < p; ++q) acc += r[q * n + i];
      out[i] = acc;
    }
  }
  return sum;
}

}  // namespace moe
