#include "core/json.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <string>

#include "core/io/file_util.h"

namespace moe {
namespace {

// The parse must fail with a message containing every piece of `expected`.
void ExpectParseError(std::string_view text, std::initializer_list<std::string_view> expected,
                      const JsonParseOptions& options = {}) {
  absl::StatusOr<Json> result = ParseJson(text, "test.json", options);
  ASSERT_FALSE(result.ok()) << "parsed without error: " << text;
  const std::string message(result.status().message());
  for (std::string_view piece : expected) {
    EXPECT_NE(message.find(piece), std::string::npos)
        << "error for " << text << "\n  is: " << message << "\n  lacks: " << piece;
  }
}

Json MustParse(std::string_view text) {
  absl::StatusOr<Json> result = ParseJson(text);
  EXPECT_TRUE(result.ok()) << text << ": " << result.status();
  return result.ok() ? *result : Json();
}

TEST(JsonTest, ParsesLiteralsAndKeepsKeyOrder) {
  const Json j =
      MustParse(R"( {"z": null, "a": true, "m": false, "s": "x", "l": [1, []], "o": {}} )");
  ASSERT_TRUE(j.is_object());
  ASSERT_EQ(j.size(), 6u);
  EXPECT_EQ(j.as_object()[0].first, "z");
  EXPECT_EQ(j.as_object()[1].first, "a");
  EXPECT_EQ(j.as_object()[5].first, "o");
  EXPECT_TRUE(j.Find("z")->is_null());
  EXPECT_TRUE(j.Find("a")->as_bool());
  EXPECT_FALSE(j.Find("m")->as_bool());
  EXPECT_EQ(j.Find("s")->as_string(), "x");
  EXPECT_EQ(j.Find("l")->as_array()[0].as_int(), 1);
  EXPECT_EQ(j.Find("l")->as_array()[1].size(), 0u);
  EXPECT_TRUE(j.Find("o")->is_object());
  EXPECT_EQ(j.Find("missing"), nullptr);
  // Written back compactly, the members come out in the same order.
  EXPECT_EQ(j.Dump(), R"({"z":null,"a":true,"m":false,"s":"x","l":[1,[]],"o":{}})");
}

TEST(JsonTest, ParsesNumbers) {
  EXPECT_EQ(MustParse("0").as_int(), 0);
  EXPECT_EQ(MustParse("-45").as_int(), -45);
  EXPECT_EQ(MustParse("1.5").as_double(), 1.5);
  EXPECT_FALSE(MustParse("1.5").is_int());
  EXPECT_EQ(MustParse("-2.5e+3").as_double(), -2500.0);
  EXPECT_EQ(MustParse("1E-2").as_double(), 0.01);
  EXPECT_EQ(MustParse("6.02214076e23").as_double(), 6.02214076e23);
  // Integral values are ints whatever their spelling.
  EXPECT_EQ(MustParse("1e3").as_int(), 1000);
  EXPECT_EQ(MustParse("2.0").as_int(), 2);
  // Integers beyond 2^53 stay exact.
  EXPECT_EQ(MustParse("9007199254740993").as_int(), 9007199254740993);
  EXPECT_EQ(MustParse("9223372036854775807").as_int(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(MustParse("-9223372036854775808").as_int(), std::numeric_limits<int64_t>::min());
  // Beyond int64 they become doubles, as in Python's float().
  const Json big = MustParse("18446744073709551616");
  EXPECT_FALSE(big.is_int());
  EXPECT_EQ(big.as_double(), 18446744073709551616.0);
  // Underflow is zero; overflow is an error.
  EXPECT_EQ(MustParse("1e-400").as_double(), 0.0);
  EXPECT_EQ(MustParse("0.000001e-400").as_double(), 0.0);
  EXPECT_TRUE(std::signbit(MustParse("-1e-400").as_double()));
  ExpectParseError("1e400", {"line 1, column 1", "too large for a double"});
  ExpectParseError("-123456789e999", {"too large for a double"});
}

TEST(JsonTest, RejectsMalformedNumbers) {
  ExpectParseError("01", {"leading zeros"});
  ExpectParseError("-01", {"leading zeros"});
  ExpectParseError("+1", {"unexpected '+'"});
  ExpectParseError(".5", {"unexpected '.'"});
  ExpectParseError("1.", {"after the decimal point"});
  ExpectParseError("1e", {"in the exponent"});
  ExpectParseError("1e+", {"in the exponent"});
  ExpectParseError("-", {"expected a digit"});
  ExpectParseError("NaN", {"unexpected 'N'"});
  ExpectParseError("Infinity", {"unexpected 'I'"});
  ExpectParseError("[1 2]", {"line 1, column 4", "expected ',' or ']'"});
}

TEST(JsonTest, DecodesEscapesAndUnicode) {
  EXPECT_EQ(MustParse(R"("a\"b\\c\/d\b\f\n\r\t")").as_string(), "a\"b\\c/d\b\f\n\r\t");
  EXPECT_EQ(MustParse(R"("\u0041\u00e9\u20AC")").as_string(), "A\xC3\xA9\xE2\x82\xAC");
  // A surrogate pair becomes one 4-byte UTF-8 character (U+1F600).
  EXPECT_EQ(MustParse(R"("\uD83D\uDE00")").as_string(), "\xF0\x9F\x98\x80");
  EXPECT_EQ(MustParse(R"("\udbff\udfff")").as_string(), "\xF4\x8F\xBF\xBF");  // U+10FFFF
  EXPECT_EQ(MustParse(R"("\u0000")").as_string(), std::string(1, '\0'));
  // Raw UTF-8 passes through unchanged.
  EXPECT_EQ(MustParse("\"h\xC3\xA9llo \xF0\x9F\x98\x80\"").as_string(),
            "h\xC3\xA9llo \xF0\x9F\x98\x80");
}

TEST(JsonTest, RejectsBadStrings) {
  ExpectParseError(R"("abc)", {"unterminated string"});
  ExpectParseError("\"a\nb\"", {"line 1, column 3", "control character 0x0A"});
  ExpectParseError(R"("\x41")", {"invalid escape", "'x'"});
  ExpectParseError(R"("\u12G4")", {"four hex digits"});
  ExpectParseError(R"("\u12)", {"four hex digits"});
  ExpectParseError(R"("\uDC00")", {"lone low surrogate \\uDC00"});
  ExpectParseError(R"("\uD800")", {"high surrogate \\uD800 is not followed"});
  ExpectParseError(R"("\uD800\u0041")", {"followed by \\u0041, which is not a low surrogate"});
  ExpectParseError("\"\xC3\x28\"", {"column 2", "invalid UTF-8"});  // bad continuation
  ExpectParseError("\"\xC0\xAF\"", {"invalid UTF-8"});              // overlong '/'
  ExpectParseError("\"\xED\xA0\x80\"", {"invalid UTF-8"});          // encoded surrogate
  ExpectParseError("\"\xF4\x90\x80\x80\"", {"invalid UTF-8"});      // above U+10FFFF
  ExpectParseError("\"\xE2\x82\"", {"invalid UTF-8"});              // truncated sequence
  ExpectParseError("'single'", {"unexpected '''"});
}

TEST(JsonTest, ValidatesUtf8) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("h\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF"));
  EXPECT_FALSE(IsValidUtf8("\xC3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));      // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(
      IsValidUtf8("a\xFF"
                  "b"));
  EXPECT_FALSE(IsValidUtf8("\x80"));  // lone continuation byte
}

TEST(JsonTest, ErrorsGiveLineAndColumn) {
  ExpectParseError("{\n  \"a\": 1,\n  \"b\" 2\n}", {"invalid JSON in test.json at line 3, column 7",
                                                    "expected ':' after key \"b\""});
  ExpectParseError("[1,\n2,\n]", {"line 3, column 1", "expected a value"});  // trailing comma
  ExpectParseError("{\"a\": 1,}", {"line 1, column 9", "expected a string key"});
  ExpectParseError("{\"a\": 1 // comment\n}", {"line 1, column 9"});
  ExpectParseError("", {"line 1, column 1", "unexpected end of text"});
  ExpectParseError("  \n ", {"line 2, column 2", "unexpected end of text"});
  ExpectParseError("[1] [2]", {"line 1, column 5", "unexpected text after the JSON value"});
  ExpectParseError("tru", {"unexpected 't'"});
  ExpectParseError("\xEF\xBB\xBF{}", {"byte order mark"});
  ExpectParseError("{\"k\": 1, \"k\": 2}", {"line 1, column 10", "duplicate key \"k\""});
  EXPECT_TRUE(ParseJson("{\"k\": 1, \"k\": 2}", "t", {.allow_duplicate_keys = true}).ok());
}

TEST(JsonTest, LimitsNestingDepth) {
  EXPECT_TRUE(ParseJson("[[[1]]]", "t", {.max_depth = 3}).ok());
  ExpectParseError("[[[[1]]]]", {"line 1, column 4", "deeper than the limit of 3"},
                   {.max_depth = 3});
  ExpectParseError(R"({"a": {"b": {"c": {}}}})", {"deeper than the limit of 3"}, {.max_depth = 3});
  // Far deeper than the default limit: a clean error, not a stack overflow.
  ExpectParseError(std::string(1000000, '['), {"deeper than the limit of 256"});
  EXPECT_TRUE(ParseJson(std::string(256, '[') + std::string(256, ']')).ok());
}

TEST(JsonTest, DumpsCompactAndIndented) {
  Json j = Json::MakeObject();
  j.Set("name", "moe");
  j.Set("layers", 4);
  j.Set("eps", 1e-5);
  j.Set("list", Json::MakeArray({1, 2.5, "x", nullptr, true}));
  j.Set("empty", Json::MakeArray());
  j.Set("nested", Json::MakeObject({{"k", false}}));
  EXPECT_EQ(j.Dump(),
            R"({"name":"moe","layers":4,"eps":1e-05,"list":[1,2.5,"x",null,true],"empty":[],)"
            R"("nested":{"k":false}})");
  EXPECT_EQ(j.Dump(2), R"({
  "name": "moe",
  "layers": 4,
  "eps": 1e-05,
  "list": [
    1,
    2.5,
    "x",
    null,
    true
  ],
  "empty": [],
  "nested": {
    "k": false
  }
})");
  // Set replaces in place and keeps the position.
  j.Set("layers", 8);
  EXPECT_EQ(j.as_object()[1].first, "layers");
  EXPECT_EQ(j.Find("layers")->as_int(), 8);
  EXPECT_EQ(j.size(), 6u);
}

TEST(JsonTest, DumpEscapesAndRoundTrips) {
  const std::string s = std::string("q\"b\\n\n\t\x01 \xC3\xA9") + '\0';
  EXPECT_EQ(Json(s).Dump(), "\"q\\\"b\\\\n\\n\\t\\u0001 \xC3\xA9\\u0000\"");
  EXPECT_EQ(MustParse(Json(s).Dump()).as_string(), s);
  // Doubles are written in the shortest form that reads back exactly.
  for (double v :
       {0.1, -1.0 / 3.0, 1e-300, 5e-324, 1.7976931348623157e308, 123456.789, 6.02214076e23}) {
    const std::string text = Json(v).Dump();
    EXPECT_EQ(MustParse(text).as_double(), v) << text;
  }
  EXPECT_EQ(Json(0.1).Dump(), "0.1");
  EXPECT_EQ(Json(int64_t{9007199254740993}).Dump(), "9007199254740993");
  EXPECT_EQ(Json(std::numeric_limits<int64_t>::min()).Dump(), "-9223372036854775808");
  // JSON has no NaN or infinity.
  EXPECT_EQ(Json(std::nan("")).Dump(), "null");
  EXPECT_EQ(Json(-std::numeric_limits<double>::infinity()).Dump(), "null");
  // A whole document survives parse -> dump -> parse.
  const std::string doc =
      R"({"a":[1,-2,3.25,1e+100,"\u00e9",{"b":null}],"c":"\ud83d\ude00","d":-9223372036854775808})";
  const Json parsed = MustParse(doc);
  EXPECT_EQ(MustParse(parsed.Dump()), parsed);
  EXPECT_EQ(MustParse(parsed.Dump(4)), parsed);
}

TEST(JsonTest, ReadJsonFileNamesTheFile) {
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/json_test_" + std::to_string(::getpid()) + ".json";
  ASSERT_TRUE(WriteFileAtomically(path, "{\n  \"hidden_size\": 64,\n  \"bad\": tru\n}").ok());
  absl::StatusOr<Json> bad = ReadJsonFile(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(path + " at line 3, column 10"), std::string::npos)
      << bad.status();
  ASSERT_TRUE(WriteFileAtomically(path, R"({"hidden_size": 64})").ok());
  absl::StatusOr<Json> good = ReadJsonFile(path);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->Find("hidden_size")->as_int(), 64);
  ::unlink(path.c_str());
  absl::StatusOr<Json> missing = ReadJsonFile(path);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(path), std::string::npos) << missing.status();
}

TEST(JsonDeathTest, TypeMismatchIsAProgrammingError) {
  const Json j = 3.5;
  EXPECT_DEATH((void)j.as_string(), "as_string\\(\\) on a number");
  EXPECT_DEATH((void)j.as_int(), "as_int\\(\\) on a non-integral number");
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

TEST(JsonTest, RealIsAlwaysWrittenAsAReal) {
  Json j = Json::MakeObject();
  j.Set("zero", Json::Real(0.0));
  j.Set("big", Json::Real(1e6));
  j.Set("third", Json::Real(1.0 / 3));
  j.Set("huge", Json::Real(1e300));
  j.Set("int", 3.0);
  EXPECT_EQ(j.Dump(),
            R"({"zero":0.0,"big":1000000.0,"third":0.3333333333333333,"huge":1e+300,"int":3})");
  // It reads back as the same number.
  absl::StatusOr<Json> back = ParseJson(j.Dump(), "test");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->Find("big")->as_double(), 1e6);
}

}  // namespace
}  // namespace moe
