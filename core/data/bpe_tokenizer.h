// A Hugging Face byte-level BPE tokenizer (GPT-2, RoBERTa, GPT-NeoX style)
// loaded from its tokenizer.json, giving the ids `tokenizers` gives.
//
// Encode(text) follows the reference pipeline:
//   1. added tokens ("<|endoftext|>", ...) are cut out of the text, leftmost
//      longest match first, non-normalized tokens before normalized ones
//      (lstrip / rstrip absorb the whitespace beside them);
//   2. each remaining piece gets a leading space if add_prefix_space is set and
//      it does not start with one, then is split by the GPT-2 pattern
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      (hand-written; character classes from core/data/unicode.h);
//   3. each word's bytes become the printable characters of GPT-2's
//      bytes_to_unicode table, and BPE merges them, lowest merge rank first.
//
// Supported tokenizer.json: model.type "BPE" (merges as "a b" strings or
// ["a", "b"] pairs; unk_token, fuse_unk, byte_fallback, ignore_merges);
// pre_tokenizer ByteLevel (alone or as the only step of a Sequence); no
// normalizer; post_processor absent or ByteLevel. Anything else (a normalizer,
// a Split pre-tokenizer, a template post-processor that would add tokens,
// BPE dropout, subword prefixes, single_word added tokens, truncation) is
// refused with an error naming the field, rather than silently giving other
// ids than the reference.
#ifndef MOE_CORE_DATA_BPE_TOKENIZER_H_
#define MOE_CORE_DATA_BPE_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "core/data/tokenizer.h"
#include "core/json.h"

namespace moe {

class BpeTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromFile(const std::string& path);
  // `source` names the JSON in errors.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromJson(const Json& json,
                                                                const std::string& source);

  std::vector<int32_t> Encode(std::string_view text) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  // The first of "<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>" found
  // among the added tokens, then in the vocabulary; -1 if none.
  int32_t eod_id() const override { return eod_id_; }
  std::string name() const override { return source_; }

  // Step 2's split by the GPT-2 pattern, exposed for tests.
  static std::vector<std::string_view> SplitGpt2(std::string_view text);

 private:
  struct AddedToken {
    std::string content;
    int32_t id = 0;
    bool lstrip = false;
    bool rstrip = false;
    bool normalized = false;
  };
  // A part of the input: text still to tokenize, or an added token's id.
  struct Piece {
    std::string_view text;
    int32_t added_id = -1;
  };
  struct Merge {
    int32_t rank;
    int32_t id;
  };

  BpeTokenizer() = default;
  absl::Status LoadModel(const Json& model);
  absl::Status LoadAddedTokens(const Json& added);
  void SplitAddedTokens(const std::vector<const AddedToken*>& tokens,
                        std::vector<Piece>* pieces) const;
  void EncodePiece(std::string_view piece, std::vector<int32_t>* out) const;
  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const;
  void MergeSymbols(std::vector<int32_t>* ids) const;
  const Merge* FindMerge(int32_t left, int32_t right) const;
  int32_t LookUp(const std::string& token) const;

  std::string source_;
  std::unordered_map<std::string, int32_t> vocab_;
  // Key: left id << 32 | right id.
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<AddedToken> added_tokens_;
  // Pointers into added_tokens_, per matching pass.
  std::vector<const AddedToken*> raw_tokens_;
  std::vector<const AddedToken*> normalized_tokens_;
  // The id of each byte's bytes_to_unicode character, -1 if not in the vocabulary.
  std::array<int32_t, 256> byte_ids_{};
  // byte_fallback: the <0xXX> ids standing for each byte's character, empty if
  // some are missing.
  std::array<std::vector<int32_t>, 256> fallback_ids_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  bool add_prefix_space_ = false;
  bool use_regex_ = true;
  int64_t vocab_size_ = 0;
  int32_t eod_id_ = -1;
};

}  // namespace moe

#endif  // MOE_CORE_DATA_BPE_TOKENIZER_H_
