#include "core/data/tokenizer.h"

#include "core/data/bpe_tokenizer.h"

namespace moe {

std::vector<int32_t> ByteTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<uint8_t>(text[i]);
  return ids;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& spec) {
  if (spec == "byte") return std::make_unique<ByteTokenizer>();
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> bpe = BpeTokenizer::FromFile(spec);
  if (!bpe.ok()) return bpe.status();
  return std::unique_ptr<Tokenizer>(*std::move(bpe));
}

}  // namespace moe
