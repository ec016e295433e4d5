// The little Unicode the BPE pre-tokenizer needs: UTF-8 decoding and the
// character classes of the GPT-2 split pattern.
//
// The classes come from a table generated from Python's unicodedata
// (core/data/unicode_tables.cc, Unicode 14.0): letters are the general
// categories L*, numbers N*, whitespace what Oniguruma's \s matches for UTF-8
// (Zs, Zl, Zp, U+0009-000D, U+0085; the same set as Unicode's White_Space).
// Hugging Face `tokenizers` matches with Oniguruma's own tables, so the two
// can only differ on code points assigned after Unicode 14.0.
#ifndef MOE_CORE_DATA_UNICODE_H_
#define MOE_CORE_DATA_UNICODE_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace moe {

enum class CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kWhitespace = 3 };

CharClass ClassifyCodePoint(uint32_t code_point);

// Decodes the code point starting at text[pos] and sets *length to its bytes
// (1 to 4). A byte that does not start a well-formed sequence decodes as
// U+FFFD (class kOther) of length 1, so that any byte string can be split.
uint32_t DecodeUtf8(std::string_view text, size_t pos, int* length);

// The Unicode version of the class table ("14.0.0").
std::string_view UnicodeTableVersion();

namespace unicode_internal {
struct UnicodeRange {
  uint32_t first;
  uint32_t last;
  CharClass cls;
};
// Defined in the generated unicode_tables.cc.
extern const char kUnicodeVersion[];
extern const UnicodeRange kUnicodeRanges[];
extern const int kUnicodeRangeCount;
}  // namespace unicode_internal

}  // namespace moe

#endif  // MOE_CORE_DATA_UNICODE_H_
