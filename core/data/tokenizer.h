// Text to token ids, for preprocessing corpora into indexed datasets.
//
//   "byte"            ByteTokenizer: ids 0..255 are the UTF-8 bytes, 256 is
//                     the end-of-document token; vocabulary 257. Needs no file,
//                     so the small examples run anywhere.
//   path/to/tokenizer.json
//                     BpeTokenizer (core/data/bpe_tokenizer.h): a Hugging Face
//                     byte-level BPE (GPT-2 style), giving the ids the
//                     `tokenizers` package gives.
#ifndef MOE_CORE_DATA_TOKENIZER_H_
#define MOE_CORE_DATA_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // The ids of `text` (UTF-8), with no end-of-document token appended.
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;
  // One more than the largest id Encode() or eod_id() can return.
  virtual int64_t vocab_size() const = 0;
  // The end-of-document id, or -1 when the vocabulary has none.
  virtual int32_t eod_id() const = 0;
  // "byte", or the tokenizer.json path: for messages.
  virtual std::string name() const = 0;
};

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kEodId = 256;

  std::vector<int32_t> Encode(std::string_view text) const override;
  int64_t vocab_size() const override { return 257; }
  int32_t eod_id() const override { return kEodId; }
  std::string name() const override { return "byte"; }
};

// `spec` is a --tokenizer flag value: "byte" or the path of a tokenizer.json.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& spec);

}  // namespace moe

#endif  // MOE_CORE_DATA_TOKENIZER_H_
