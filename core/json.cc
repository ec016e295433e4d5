#include "core/json.h"

#include <charconv>
#include <cmath>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/io/file_util.h"

namespace moe {

// ---------------------------------------------------------------- the value

Json::Json(bool value) : type_(Type::kBool), bool_(value) {}

Json::Json(double value) : type_(Type::kNumber), number_(value) {
  // 2^63 is exact in double; the range is [-2^63, 2^63).
  if (std::isfinite(value) && value == std::trunc(value) && value >= -9223372036854775808.0 &&
      value < 9223372036854775808.0) {
    is_int_ = true;
    int_ = static_cast<int64_t>(value);
  }
}

Json Json::Real(double value) {
  Json j(value);
  j.is_int_ = false;
  return j;
}

Json::Json(const char* value) : type_(Type::kString), string_(value) {}
Json::Json(std::string value) : type_(Type::kString), string_(std::move(value)) {}
Json::Json(std::string_view value) : type_(Type::kString), string_(value) {}

void Json::SetInt(int64_t value) {
  type_ = Type::kNumber;
  is_int_ = true;
  int_ = value;
  number_ = static_cast<double>(value);
}

Json Json::MakeArray(Array values) {
  Json j;
  j.type_ = Type::kArray;
  j.array_ = std::move(values);
  return j;
}

Json Json::MakeObject(Object members) {
  Json j;
  j.type_ = Type::kObject;
  j.object_ = std::move(members);
  return j;
}

const char* Json::TypeName(Type type) {
  switch (type) {
    case Type::kNull:
      return "null";
    case Type::kBool:
      return "boolean";
    case Type::kNumber:
      return "number";
    case Type::kString:
      return "string";
    case Type::kArray:
      return "array";
    case Type::kObject:
      return "object";
  }
  return "?";
}

bool Json::as_bool() const {
  MOE_CHECK(is_bool()) << "Json: as_bool() on a " << type_name();
  return bool_;
}

double Json::as_double() const {
  MOE_CHECK(is_number()) << "Json: as_double() on a " << type_name();
  return number_;
}

int64_t Json::as_int() const {
  MOE_CHECK(is_int()) << "Json: as_int() on "
                      << (is_number() ? "a non-integral number" : type_name());
  return int_;
}

const std::string& Json::as_string() const {
  MOE_CHECK(is_string()) << "Json: as_string() on a " << type_name();
  return string_;
}

const Json::Array& Json::as_array() const {
  MOE_CHECK(is_array()) << "Json: as_array() on a " << type_name();
  return array_;
}

Json::Array& Json::as_array() {
  MOE_CHECK(is_array()) << "Json: as_array() on a " << type_name();
  return array_;
}

const Json::Object& Json::as_object() const {
  MOE_CHECK(is_object()) << "Json: as_object() on a " << type_name();
  return object_;
}

Json::Object& Json::as_object() {
  MOE_CHECK(is_object()) << "Json: as_object() on a " << type_name();
  return object_;
}

size_t Json::size() const {
  MOE_CHECK(is_array() || is_object()) << "Json: size() on a " << type_name();
  return is_array() ? array_.size() : object_.size();
}

const Json* Json::Find(std::string_view key) const {
  if (!is_object()) return nullptr;
  for (const Member& m : object_) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

Json* Json::Find(std::string_view key) {
  return const_cast<Json*>(static_cast<const Json*>(this)->Find(key));
}

Json& Json::Set(std::string key, Json value) {
  MOE_CHECK(is_object()) << "Json: Set(\"" << key << "\") on a " << type_name();
  if (Json* existing = Find(key)) {
    *existing = std::move(value);
    return *existing;
  }
  object_.emplace_back(std::move(key), std::move(value));
  return object_.back().second;
}

void Json::Append(Json value) {
  MOE_CHECK(is_array()) << "Json: Append() on a " << type_name();
  array_.push_back(std::move(value));
}

bool Json::operator==(const Json& other) const {
  if (type_ != other.type_) return false;
  switch (type_) {
    case Type::kNull:
      return true;
    case Type::kBool:
      return bool_ == other.bool_;
    case Type::kNumber:
      if (is_int_ && other.is_int_) return int_ == other.int_;
      return number_ == other.number_;
    case Type::kString:
      return string_ == other.string_;
    case Type::kArray:
      return array_ == other.array_;
    case Type::kObject:
      return object_ == other.object_;
  }
  return false;
}

// ---------------------------------------------------------------- writing

namespace {

void AppendQuoted(std::string_view s, std::string* out) {
  out->push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", static_cast<unsigned char>(c));
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

void AppendNewline(int indent, int level, std::string* out) {
  out->push_back('\n');
  out->append(static_cast<size_t>(indent) * static_cast<size_t>(level), ' ');
}

}  // namespace

void Json::DumpTo(std::string* out, int indent, int level) const {
  switch (type_) {
    case Type::kNull:
      out->append("null");
      return;
    case Type::kBool:
      out->append(bool_ ? "true" : "false");
      return;
    case Type::kNumber: {
      if (is_int_) {
        absl::StrAppend(out, int_);
      } else if (!std::isfinite(number_)) {
        out->append("null");
      } else {
        // Shortest text that reads back as the same double.
        char buffer[32];
        // An integral value here was built with Real(): keep it a real on
        // the way out ("1000000.0", as Python writes it, not "1e+06").
        const bool integral = number_ == std::trunc(number_) && std::abs(number_) < 1e16;
        const auto result = integral ? std::to_chars(buffer, buffer + sizeof(buffer), number_,
                                                     std::chars_format::fixed)
                                     : std::to_chars(buffer, buffer + sizeof(buffer), number_);
        out->append(buffer, result.ptr);
        if (integral) out->append(".0");
      }
      return;
    }
    case Type::kString:
      AppendQuoted(string_, out);
      return;
    case Type::kArray:
    case Type::kObject: {
      const bool is_arr = type_ == Type::kArray;
      const size_t n = is_arr ? array_.size() : object_.size();
      out->push_back(is_arr ? '[' : '{');
      for (size_t i = 0; i < n; ++i) {
        if (i > 0) out->push_back(',');
        if (indent >= 0) AppendNewline(indent, level + 1, out);
        if (is_arr) {
          array_[i].DumpTo(out, indent, level + 1);
        } else {
          AppendQuoted(object_[i].first, out);
          out->append(indent >= 0 ? ": " : ":");
          object_[i].second.DumpTo(out, indent, level + 1);
        }
      }
      if (indent >= 0 && n > 0) AppendNewline(indent, level, out);
      out->push_back(is_arr ? ']' : '}');
      return;
    }
  }
}

std::string Json::Dump(int indent) const {
  std::string out;
  DumpTo(&out, indent, 0);
  return out;
}

// ---------------------------------------------------------------- parsing

namespace {

// Length of the valid UTF-8 sequence at `pos` (lead byte >= 0x80), or 0.
size_t Utf8SequenceLength(std::string_view text, size_t pos) {
  auto byte = [&](size_t i) -> unsigned {
    return pos + i < text.size() ? static_cast<unsigned char>(text[pos + i]) : 0u;
  };
  auto cont = [&](size_t i, unsigned lo = 0x80, unsigned hi = 0xBF) {
    return byte(i) >= lo && byte(i) <= hi;
  };
  const unsigned c = byte(0);
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c == 0xE0) return cont(1, 0xA0) && cont(2) ? 3 : 0;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return cont(1) && cont(2) ? 3 : 0;
  if (c == 0xED) return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0;  // no UTF-16 surrogates
  if (c == 0xF0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (c == 0xF4) return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

class Parser {
 public:
  Parser(std::string_view text, std::string_view source, const JsonParseOptions& options)
      : text_(text), source_(source), options_(options) {}

  absl::StatusOr<Json> Parse() {
    if (text_.substr(0, 3) == "\xEF\xBB\xBF") {
      return Error(0,
                   "the text starts with a UTF-8 byte order mark, which JSON forbids; remove it");
    }
    Json value;
    SkipSpace();
    if (absl::Status s = ParseValue(&value, 0); !s.ok()) return s;
    SkipSpace();
    if (pos_ != text_.size()) return Error(pos_, "unexpected text after the JSON value");
    return value;
  }

 private:
  absl::Status Error(size_t at, std::string_view what) const {
    int line = 1;
    size_t line_start = 0;
    for (size_t i = 0; i < at && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        line_start = i + 1;
      }
    }
    return absl::InvalidArgumentError(absl::StrFormat(
        "invalid JSON in %s at line %d, column %d: %s", source_, line, at - line_start + 1, what));
  }

  // Names the byte at `at` for error messages.
  std::string Describe(size_t at) const {
    if (at >= text_.size()) return "the end of the text";
    const unsigned char c = static_cast<unsigned char>(text_[at]);
    if (c >= 0x21 && c < 0x7f) return absl::StrCat("'", std::string(1, static_cast<char>(c)), "'");
    return absl::StrFormat("byte 0x%02X", c);
  }

  void SkipSpace() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  bool Consume(std::string_view literal) {
    if (text_.substr(pos_, literal.size()) != literal) return false;
    pos_ += literal.size();
    return true;
  }

  absl::Status ParseValue(Json* out, int depth) {
    if (pos_ >= text_.size()) return Error(pos_, "unexpected end of text; expected a value");
    const char c = text_[pos_];
    switch (c) {
      case '{':
      case '[':
        if (depth >= options_.max_depth) {
          return Error(pos_, absl::StrCat("nesting is deeper than the limit of ",
                                          options_.max_depth, " levels"));
        }
        return c == '{' ? ParseObject(out, depth + 1) : ParseArray(out, depth + 1);
      case '"': {
        std::string s;
        if (absl::Status st = ParseString(&s); !st.ok()) return st;
        *out = Json(std::move(s));
        return absl::OkStatus();
      }
      case 't':
        if (Consume("true")) {
          *out = Json(true);
          return absl::OkStatus();
        }
        break;
      case 'f':
        if (Consume("false")) {
          *out = Json(false);
          return absl::OkStatus();
        }
        break;
      case 'n':
        if (Consume("null")) {
          *out = Json();
          return absl::OkStatus();
        }
        break;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(out);
    }
    return Error(pos_, absl::StrCat("unexpected ", Describe(pos_), "; expected a value"));
  }

  absl::Status ParseObject(Json* out, int depth) {
    *out = Json::MakeObject();
    Json::Object& members = out->as_object();
    std::unordered_set<std::string> keys;
    ++pos_;  // '{'
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      return absl::OkStatus();
    }
    while (true) {
      SkipSpace();
      if (pos_ >= text_.size() || text_[pos_] != '"') {
        return Error(pos_, absl::StrCat("unexpected ", Describe(pos_),
                                        "; expected a string key in double quotes"));
      }
      const size_t key_pos = pos_;
      std::string key;
      if (absl::Status s = ParseString(&key); !s.ok()) return s;
      if (!options_.allow_duplicate_keys && !keys.insert(key).second) {
        return Error(key_pos, absl::StrCat("duplicate key \"", key, "\" in an object"));
      }
      SkipSpace();
      if (pos_ >= text_.size() || text_[pos_] != ':') {
        return Error(pos_, absl::StrCat("unexpected ", Describe(pos_),
                                        "; expected ':' after key \"", key, "\""));
      }
      ++pos_;
      SkipSpace();
      Json value;
      if (absl::Status s = ParseValue(&value, depth); !s.ok()) return s;
      members.emplace_back(std::move(key), std::move(value));
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == '}') {
        ++pos_;
        return absl::OkStatus();
      }
      return Error(pos_, absl::StrCat("unexpected ", Describe(pos_),
                                      "; expected ',' or '}' after an object member"));
    }
  }

  absl::Status ParseArray(Json* out, int depth) {
    *out = Json::MakeArray();
    Json::Array& elements = out->as_array();
    ++pos_;  // '['
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      return absl::OkStatus();
    }
    while (true) {
      SkipSpace();
      Json value;
      if (absl::Status s = ParseValue(&value, depth); !s.ok()) return s;
      elements.push_back(std::move(value));
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == ']') {
        ++pos_;
        return absl::OkStatus();
      }
      return Error(pos_, absl::StrCat("unexpected ", Describe(pos_),
                                      "; expected ',' or ']' after an array element"));
    }
  }

  static bool IsDigit(char c) { return c >= '0' && c <= '9'; }

  absl::Status ParseNumber(Json* out) {
    const size_t start = pos_;
    if (text_[pos_] == '-') ++pos_;
    if (pos_ >= text_.size() || !IsDigit(text_[pos_])) {
      return Error(pos_, absl::StrCat("unexpected ", Describe(pos_), "; expected a digit"));
    }
    const size_t int_start = pos_;
    if (text_[pos_] == '0') {
      ++pos_;
      if (pos_ < text_.size() && IsDigit(text_[pos_])) {
        return Error(start, "numbers may not have leading zeros");
      }
    } else {
      while (pos_ < text_.size() && IsDigit(text_[pos_])) ++pos_;
    }
    const size_t int_end = pos_;
    bool integral_literal = true;
    if (pos_ < text_.size() && text_[pos_] == '.') {
      integral_literal = false;
      ++pos_;
      if (pos_ >= text_.size() || !IsDigit(text_[pos_])) {
        return Error(pos_, absl::StrCat("unexpected ", Describe(pos_),
                                        "; expected a digit after the decimal point"));
      }
      while (pos_ < text_.size() && IsDigit(text_[pos_])) ++pos_;
    }
    const size_t mantissa_end = pos_;
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      integral_literal = false;
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      if (pos_ >= text_.size() || !IsDigit(text_[pos_])) {
        return Error(pos_, absl::StrCat("unexpected ", Describe(pos_),
                                        "; expected a digit in the exponent"));
      }
      while (pos_ < text_.size() && IsDigit(text_[pos_])) ++pos_;
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    if (integral_literal) {
      int64_t value = 0;
      const auto r = std::from_chars(first, last, value);
      if (r.ec == std::errc() && r.ptr == last) {
        *out = Json(value);
        return absl::OkStatus();
      }
      // Beyond int64: fall through to a double, like Python's float(...).
    }
    double value = 0;
    const auto r = std::from_chars(first, last, value);
    if (r.ec == std::errc::result_out_of_range) {
      // from_chars reports underflow and overflow alike; underflow becomes 0.
      if (DecimalMagnitude(int_start, int_end, mantissa_end) < 0) {
        *out = Json(text_[start] == '-' ? -0.0 : 0.0);
        return absl::OkStatus();
      }
      return Error(start, "number is too large for a double");
    }
    if (r.ec != std::errc() || r.ptr != last) return Error(start, "malformed number");
    *out = Json(value);
    return absl::OkStatus();
  }

  // floor(log10(|x|)) of the number text whose integer digits are
  // [int_start, int_end), fraction up to mantissa_end, exponent after it.
  int64_t DecimalMagnitude(size_t int_start, size_t int_end, size_t mantissa_end) const {
    int64_t exponent = 0;
    if (mantissa_end < pos_) {
      size_t p = mantissa_end + 1;
      bool negative = false;
      if (text_[p] == '+' || text_[p] == '-') negative = text_[p++] == '-';
      for (; p < pos_; ++p) {
        exponent = std::min<int64_t>(exponent * 10 + (text_[p] - '0'), int64_t{1} << 40);
      }
      if (negative) exponent = -exponent;
    }
    size_t p = int_start;
    while (p < int_end && text_[p] == '0') ++p;
    if (p < int_end) return exponent + static_cast<int64_t>(int_end - p) - 1;
    int64_t leading_zeros = 0;
    for (p = int_end + 1; p < mantissa_end && text_[p] == '0'; ++p) ++leading_zeros;
    return exponent - leading_zeros - 1;
  }

  absl::Status ParseHex4(uint32_t* out) {
    if (pos_ + 4 > text_.size()) return Error(pos_, "\\u escape needs four hex digits");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_ + i];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return Error(pos_ + i, absl::StrCat("unexpected ", Describe(pos_ + i),
                                            "; \\u escape needs four hex digits"));
      }
    }
    pos_ += 4;
    *out = v;
    return absl::OkStatus();
  }

  absl::Status ParseString(std::string* out) {
    const size_t open = pos_;
    ++pos_;  // '"'
    while (true) {
      // Copy the run of ordinary characters in one go.
      const size_t run_start = pos_;
      while (pos_ < text_.size()) {
        const unsigned char c = static_cast<unsigned char>(text_[pos_]);
        if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
        ++pos_;
      }
      out->append(text_.data() + run_start, pos_ - run_start);
      if (pos_ >= text_.size()) return Error(open, "unterminated string");
      const unsigned char c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        ++pos_;
        return absl::OkStatus();
      }
      if (c < 0x20) {
        return Error(pos_, absl::StrFormat("control character 0x%02X inside a string; write it as "
                                           "\\u%04X",
                                           c, c));
      }
      if (c >= 0x80) {
        const size_t n = Utf8SequenceLength(text_, pos_);
        if (n == 0) return Error(pos_, "invalid UTF-8 in a string");
        out->append(text_.data() + pos_, n);
        pos_ += n;
        continue;
      }
      // A backslash escape.
      const size_t escape_pos = pos_;
      ++pos_;
      if (pos_ >= text_.size()) return Error(open, "unterminated string");
      const char e = text_[pos_++];
      switch (e) {
        case '"':
          out->push_back('"');
          break;
        case '\\':
          out->push_back('\\');
          break;
        case '/':
          out->push_back('/');
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          uint32_t cp = 0;
          if (absl::Status s = ParseHex4(&cp); !s.ok()) return s;
          if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return Error(escape_pos, absl::StrFormat("lone low surrogate \\u%04X; a low surrogate "
                                                     "must follow a high surrogate (D800-DBFF)",
                                                     cp));
          }
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (!Consume("\\u")) {
              return Error(escape_pos,
                           absl::StrFormat("high surrogate \\u%04X is not followed by a \\u "
                                           "escape of a low surrogate (DC00-DFFF)",
                                           cp));
            }
            uint32_t low = 0;
            if (absl::Status s = ParseHex4(&low); !s.ok()) return s;
            if (low < 0xDC00 || low > 0xDFFF) {
              return Error(escape_pos, absl::StrFormat("high surrogate \\u%04X is followed by "
                                                       "\\u%04X, which is not a low surrogate "
                                                       "(DC00-DFFF)",
                                                       cp, low));
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          AppendUtf8(cp, out);
          break;
        }
        default:
          return Error(escape_pos, absl::StrCat("invalid escape: backslash followed by ",
                                                Describe(pos_ - 1), " in a string"));
      }
    }
  }

  std::string_view text_;
  std::string_view source_;
  JsonParseOptions options_;
  size_t pos_ = 0;
};

}  // namespace

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsValidUtf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const size_t n = Utf8SequenceLength(text, pos);
    if (n == 0) return false;
    pos += n;
  }
  return true;
}

absl::StatusOr<Json> ParseJson(std::string_view text, std::string_view source,
                               const JsonParseOptions& options) {
  return Parser(text, source, options).Parse();
}

absl::StatusOr<Json> ReadJsonFile(const std::string& path, const JsonParseOptions& options) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  return ParseJson(*text, path, options);
}

}  // namespace moe
