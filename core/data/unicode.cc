#include "core/data/unicode.h"

#include <algorithm>

namespace moe {
namespace {

constexpr uint32_t kReplacement = 0xFFFD;

// ASCII is nearly all of the text we see; classify it without a search.
constexpr CharClass AsciiClass(uint32_t c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return CharClass::kLetter;
  if (c >= '0' && c <= '9') return CharClass::kNumber;
  if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return CharClass::kWhitespace;
  return CharClass::kOther;
}

}  // namespace

CharClass ClassifyCodePoint(uint32_t code_point) {
  if (code_point < 0x80) return AsciiClass(code_point);
  using unicode_internal::kUnicodeRangeCount;
  using unicode_internal::kUnicodeRanges;
  using unicode_internal::UnicodeRange;
  const UnicodeRange* end = kUnicodeRanges + kUnicodeRangeCount;
  // First range whose last code point is >= code_point.
  const UnicodeRange* it = std::lower_bound(
      kUnicodeRanges, end, code_point,
      [](const UnicodeRange& range, uint32_t value) { return range.last < value; });
  if (it != end && it->first <= code_point) return it->cls;
  return CharClass::kOther;
}

uint32_t DecodeUtf8(std::string_view text, size_t pos, int* length) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  const uint8_t b0 = byte(pos);
  *length = 1;
  if (b0 < 0x80) return b0;
  int n = 0;
  uint32_t cp = 0;
  uint32_t min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return kReplacement;
  }
  if (pos + static_cast<size_t>(n) > text.size()) return kReplacement;
  for (int i = 1; i < n; ++i) {
    const uint8_t b = byte(pos + static_cast<size_t>(i));
    if ((b & 0xC0) != 0x80) return kReplacement;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kReplacement;
  *length = n;
  return cp;
}

std::string_view UnicodeTableVersion() { return unicode_internal::kUnicodeVersion; }

}  // namespace moe
