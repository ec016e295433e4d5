// A JSON value, a strict parser and a writer, for config.json,
// tokenizer.json, safetensors headers and JSONL logs.
//
// Objects keep their members in file order, so that a file read and written
// again keeps its layout. Numbers are doubles; a number with an integral
// value that fits in int64 also keeps that exact int64, so token ids and byte
// offsets above 2^53 survive a round trip.
//
// The parser accepts exactly RFC 8259: no comments, trailing commas, NaN,
// single quotes or leading zeros; strings must be valid UTF-8 and \u escapes
// must pair surrogates. Errors give the line and column (1-based, in bytes).
#ifndef MOE_CORE_JSON_H_
#define MOE_CORE_JSON_H_

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/check.h"

namespace moe {

class Json {
 public:
  enum class Type : uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<Json>;
  using Member = std::pair<std::string, Json>;
  using Object = std::vector<Member>;

  // Implicit conversions keep literals short: Json j = 3; obj.Set("k", "v").
  Json() = default;              // null
  Json(std::nullptr_t) {}        // NOLINT(google-explicit-constructor)
  Json(bool value);              // NOLINT(google-explicit-constructor)
  Json(double value);            // NOLINT(google-explicit-constructor)
  Json(const char* value);       // NOLINT(google-explicit-constructor)
  Json(std::string value);       // NOLINT(google-explicit-constructor)
  Json(std::string_view value);  // NOLINT(google-explicit-constructor)
  // A number that is always written as a real ("0.0", "1000000.0"), never as
  // an integer, for readers that type-check floats (transformers' configs).
  static Json Real(double value);
  template <std::integral T>
  requires(!std::same_as<T, bool>) Json(T value) {  // NOLINT(google-explicit-constructor)
    if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(int64_t)) {
      MOE_CHECK(value <= static_cast<T>(INT64_MAX))
          << "Json: integer " << value << " does not fit in int64";
    }
    SetInt(static_cast<int64_t>(value));
  }
  static Json MakeArray(Array values = {});
  static Json MakeObject(Object members = {});

  Type type() const { return type_; }
  const char* type_name() const { return TypeName(type_); }
  static const char* TypeName(Type type);  // "null", "boolean", "number", ...
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  // A number with an integral value in int64 range (3, -7, 1e3, 2.0).
  bool is_int() const { return type_ == Type::kNumber && is_int_; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  // Typed access; the type must match (check with is_*() first on user data).
  bool as_bool() const;
  double as_double() const;
  int64_t as_int() const;
  const std::string& as_string() const;
  const Array& as_array() const;
  Array& as_array();
  const Object& as_object() const;
  Object& as_object();

  // Number of array elements or object members.
  size_t size() const;
  // The member named `key`, or nullptr when absent or when this is not an object.
  const Json* Find(std::string_view key) const;
  Json* Find(std::string_view key);
  // Replaces the member named `key`, or appends it; returns the stored value.
  Json& Set(std::string key, Json value);
  void Append(Json value);  // arrays only

  // indent < 0: compact, no spaces ({"a":[1,2]}). indent >= 0: one element
  // per line, `indent` spaces per level, ": " after keys (like Python's
  // json.dumps(indent=...)). JSON has no NaN or infinity: those are written as
  // null. Strings must be UTF-8; they are written unescaped except for '"',
  // '\' and control characters.
  std::string Dump(int indent = -1) const;

  bool operator==(const Json& other) const;

 private:
  void SetInt(int64_t value);
  void DumpTo(std::string* out, int indent, int level) const;

  Type type_ = Type::kNull;
  bool bool_ = false;
  bool is_int_ = false;
  int64_t int_ = 0;
  double number_ = 0;
  std::string string_;
  Array array_;
  Object object_;
};

struct JsonParseOptions {
  // Deeper nesting is rejected, which bounds the parser's recursion.
  int max_depth = 256;
  // RFC 8259 leaves duplicate keys undefined; we reject them unless a caller
  // wants to report them in its own words (the safetensors reader does).
  bool allow_duplicate_keys = false;
};

// `source` names the text in errors ("invalid JSON in <source> at line 3,
// column 7: ..."); pass the file path.
absl::StatusOr<Json> ParseJson(std::string_view text, std::string_view source = "JSON text",
                               const JsonParseOptions& options = {});

// True when `text` is well-formed UTF-8 (no overlong forms, no surrogates,
// nothing above U+10FFFF): what the parser accepts inside strings.
bool IsValidUtf8(std::string_view text);

// Appends the UTF-8 encoding of `code_point` (at most U+10FFFF) to `out`.
void AppendUtf8(uint32_t code_point, std::string* out);

// Reads and parses a whole file; errors name `path`.
absl::StatusOr<Json> ReadJsonFile(const std::string& path, const JsonParseOptions& options = {});

}  // namespace moe

#endif  // MOE_CORE_JSON_H_
