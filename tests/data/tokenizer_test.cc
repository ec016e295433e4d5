// Tokenizers on hand-worked cases. Parity with the `tokenizers` package on
// trained vocabularies is checked by tokenizer_parity.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/data/bpe_tokenizer.h"
#include "core/data/tokenizer.h"
#include "core/data/unicode.h"
#include "core/json.h"

namespace moe {
namespace {

using Words = std::vector<std::string_view>;

TEST(ByteTokenizerTest, BytesAndEod) {
  ByteTokenizer tokenizer;
  EXPECT_EQ(tokenizer.Encode("Hi é"), (std::vector<int32_t>{72, 105, 32, 0xC3, 0xA9}));
  EXPECT_EQ(tokenizer.Encode(""), std::vector<int32_t>{});
  EXPECT_EQ(tokenizer.eod_id(), 256);
  EXPECT_EQ(tokenizer.vocab_size(), 257);
}

TEST(TokenizerFactoryTest, ByteAndMissingFile) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> byte = MakeTokenizer("byte");
  ASSERT_TRUE(byte.ok());
  EXPECT_EQ((*byte)->name(), "byte");
  absl::StatusOr<std::unique_ptr<Tokenizer>> missing = MakeTokenizer("/no/such/tokenizer.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/no/such/tokenizer.json"), std::string::npos);
}

TEST(UnicodeTest, Classes) {
  EXPECT_EQ(ClassifyCodePoint('a'), CharClass::kLetter);
  EXPECT_EQ(ClassifyCodePoint(0xE9), CharClass::kLetter);    // é
  EXPECT_EQ(ClassifyCodePoint(0x65E5), CharClass::kLetter);  // 日
  EXPECT_EQ(ClassifyCodePoint(0x0663), CharClass::kNumber);  // Arabic-Indic three
  EXPECT_EQ(ClassifyCodePoint(0x2163), CharClass::kNumber);  // Roman numeral four (Nl)
  EXPECT_EQ(ClassifyCodePoint(0xA0), CharClass::kWhitespace);
  EXPECT_EQ(ClassifyCodePoint(0x3000), CharClass::kWhitespace);
  EXPECT_EQ(ClassifyCodePoint(0x85), CharClass::kWhitespace);
  EXPECT_EQ(ClassifyCodePoint(0x200B), CharClass::kOther);   // zero width space is Cf
  EXPECT_EQ(ClassifyCodePoint(0x1F600), CharClass::kOther);  // 😀
  EXPECT_EQ(ClassifyCodePoint('_'), CharClass::kOther);
  EXPECT_EQ(ClassifyCodePoint(0x0301), CharClass::kOther);  // combining acute (Mn)
  EXPECT_EQ(UnicodeTableVersion(), "14.0.0");
}

TEST(UnicodeTest, DecodesUtf8AndReplacesInvalidBytes) {
  int length = 0;
  EXPECT_EQ(DecodeUtf8("\xF0\x9F\x98\x80", 0, &length), 0x1F600u);
  EXPECT_EQ(length, 4);
  EXPECT_EQ(DecodeUtf8("\xC3\xA9", 0, &length), 0xE9u);
  EXPECT_EQ(length, 2);
  EXPECT_EQ(DecodeUtf8("\xC3", 0, &length), 0xFFFDu);  // truncated
  EXPECT_EQ(length, 1);
  EXPECT_EQ(DecodeUtf8("\xC0\xAF", 0, &length), 0xFFFDu);  // overlong
  EXPECT_EQ(length, 1);
  EXPECT_EQ(DecodeUtf8("\xED\xA0\x80", 0, &length), 0xFFFDu);  // surrogate
  EXPECT_EQ(length, 1);
}

TEST(SplitGpt2Test, HandWorkedCases) {
  const auto split = BpeTokenizer::SplitGpt2;
  EXPECT_EQ(split("Hello my friend, how?"), (Words{"Hello", " my", " friend", ",", " how", "?"}));
  EXPECT_EQ(split("Hello there       dear"), (Words{"Hello", " there", "      ", " dear"}));
  EXPECT_EQ(split("Hello there\nHello"), (Words{"Hello", " there", "\n", "Hello"}));
  EXPECT_EQ(split("a\n\nb"), (Words{"a", "\n", "\n", "b"}));
  EXPECT_EQ(split("a  "), (Words{"a", "  "}));
  EXPECT_EQ(split(" "), (Words{" "}));
  EXPECT_EQ(split("don't we'll I'M"), (Words{"don", "'t", " we", "'ll", " I", "'", "M"}));
  EXPECT_EQ(split("?'s"), (Words{"?'", "s"}));
  EXPECT_EQ(split("abc123 456x"), (Words{"abc", "123", " 456", "x"}));
  EXPECT_EQ(split("  ?!"), (Words{" ", " ?!"}));
  EXPECT_EQ(split("héllo wörld"), (Words{"héllo", " wörld"}));
  EXPECT_EQ(split("日本語 テキスト"), (Words{"日本語", " テキスト"}));
  EXPECT_EQ(split("x😀😀y"), (Words{"x", "😀😀", "y"}));
  EXPECT_EQ(split("a\xC2\xA0"
                  "b"),
            (Words{"a", "\xC2\xA0", "b"}));             // NBSP is whitespace
  EXPECT_EQ(split("\t\tx"), (Words{"\t", "\t", "x"}));  // the optional prefix is ' ' only
  EXPECT_EQ(split(""), Words{});
}

// GPT-2's bytes_to_unicode, written out independently of the tokenizer's.
std::string ByteChar(int b) {
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
  int cp = b;
  if (!printable) {
    int n = 0;
    for (int x = 0; x < b; ++x) {
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) ++n;
    }
    cp = 256 + n;
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

// A tiny byte-level BPE: the 256 byte characters (id = byte), then merges
// he(256) ll(257) hell(258) Ġw(259) or(260) Ġwor(261), and added tokens
// <|endoftext|>(262) and <mask>(263, lstrip).
Json TinyTokenizerJson(bool add_prefix_space) {
  Json vocab = Json::MakeObject();
  for (int b = 0; b < 256; ++b) vocab.Set(ByteChar(b), b);
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"},           {"l", "l"}, {"he", "ll"},
      {ByteChar(' '), "w"}, {"o", "r"}, {ByteChar(' ') + "w", "or"}};
  Json merge_list = Json::MakeArray();
  int id = 256;
  for (const auto& [a, b] : merges) {
    vocab.Set(a + b, id++);
    merge_list.Append(a + " " + b);
  }
  Json model = Json::MakeObject();
  model.Set("type", "BPE");
  model.Set("vocab", std::move(vocab));
  model.Set("merges", std::move(merge_list));
  Json pre = Json::MakeObject();
  pre.Set("type", "ByteLevel");
  pre.Set("add_prefix_space", add_prefix_space);
  pre.Set("use_regex", true);
  const auto added = [](int token_id, const char* content, bool lstrip) {
    Json token = Json::MakeObject();
    token.Set("id", token_id);
    token.Set("content", content);
    token.Set("single_word", false);
    token.Set("lstrip", lstrip);
    token.Set("rstrip", false);
    token.Set("normalized", false);
    token.Set("special", true);
    return token;
  };
  Json json = Json::MakeObject();
  json.Set("added_tokens",
           Json::MakeArray({added(262, "<|endoftext|>", false), added(263, "<mask>", true)}));
  json.Set("normalizer", nullptr);
  json.Set("pre_tokenizer", std::move(pre));
  json.Set("post_processor", nullptr);
  json.Set("model", std::move(model));
  return json;
}

TEST(BpeTokenizerTest, MergesByRank) {
  auto tokenizer = BpeTokenizer::FromJson(TinyTokenizerJson(false), "tiny");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), 264);
  EXPECT_EQ((*tokenizer)->eod_id(), 262);
  // hello -> hell o; " world" -> Ġwor l d.
  EXPECT_EQ((*tokenizer)->Encode("hello world"), (std::vector<int32_t>{258, 'o', 261, 'l', 'd'}));
  EXPECT_EQ((*tokenizer)->Encode("hello<|endoftext|>"), (std::vector<int32_t>{258, 'o', 262}));
  // <mask> swallows the space on its left.
  EXPECT_EQ((*tokenizer)->Encode("a <mask>"), (std::vector<int32_t>{'a', 263}));
  EXPECT_EQ((*tokenizer)->Encode("a\xE3\x80\x80 <mask>"), (std::vector<int32_t>{'a', 263}));
  EXPECT_EQ((*tokenizer)->Encode("\xC3\xA9 <mask>"), (std::vector<int32_t>{0xC3, 0xA9, 263}));
  // Bytes outside ASCII map through bytes_to_unicode: id = byte value here.
  EXPECT_EQ((*tokenizer)->Encode("é\n"), (std::vector<int32_t>{0xC3, 0xA9, '\n'}));
  EXPECT_EQ((*tokenizer)->Encode(""), std::vector<int32_t>{});
}

TEST(BpeTokenizerTest, AddPrefixSpace) {
  auto tokenizer = BpeTokenizer::FromJson(TinyTokenizerJson(true), "tiny");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->Encode("hello"), (std::vector<int32_t>{' ', 258, 'o'}));
  EXPECT_EQ((*tokenizer)->Encode(" hello"), (std::vector<int32_t>{' ', 258, 'o'}));
}

// Loads TinyTokenizerJson edited by `edit` and expects an error containing `part`.
void ExpectLoadError(const std::function<void(Json&)>& edit, const std::string& part) {
  Json json = TinyTokenizerJson(false);
  edit(json);
  auto tokenizer = BpeTokenizer::FromJson(json, "edited.json");
  ASSERT_FALSE(tokenizer.ok()) << "expected an error containing: " << part;
  EXPECT_NE(tokenizer.status().message().find(part), std::string::npos) << tokenizer.status();
  EXPECT_NE(tokenizer.status().message().find("edited.json"), std::string::npos);
}

TEST(BpeTokenizerTest, RefusesWhatItCannotReproduce) {
  ExpectLoadError(
      [](Json& j) {
        j.Set("normalizer", Json::MakeObject({{"type", "NFC"}}));
      },
      "normalizer \"NFC\"");
  ExpectLoadError(
      [](Json& j) {
        j.Set("pre_tokenizer", Json::MakeObject({{"type", "Split"}}));
      },
      "pre_tokenizer \"Split\"");
  ExpectLoadError(
      [](Json& j) {
        j.Set("post_processor", Json::MakeObject({{"type", "TemplateProcessing"}}));
      },
      "post_processor \"TemplateProcessing\"");
  ExpectLoadError([](Json& j) { j.Find("model")->Set("type", "WordPiece"); }, "model.type");
  ExpectLoadError([](Json& j) { j.Find("model")->Set("dropout", 0.1); }, "dropout");
  ExpectLoadError([](Json& j) { j.Find("model")->Find("merges")->Append("q zz"); },
                  "\"zz\" is not in model.vocab");
  ExpectLoadError([](Json& j) { j.Find("model")->Find("merges")->Append("a b c"); },
                  "not two tokens");
  ExpectLoadError([](Json& j) { j.Find("added_tokens")->as_array()[0].Set("single_word", true); },
                  "single_word");
}

TEST(BpeTokenizerTest, AcceptsPairMergesAndSequencePreTokenizer) {
  Json json = TinyTokenizerJson(false);
  Json pairs = Json::MakeArray();
  for (const Json& merge : json.Find("model")->Find("merges")->as_array()) {
    const std::string& text = merge.as_string();
    const size_t space = text.find(' ');
    pairs.Append(Json::MakeArray({text.substr(0, space), text.substr(space + 1)}));
  }
  json.Find("model")->Set("merges", std::move(pairs));
  Json byte_level = *json.Find("pre_tokenizer");
  json.Set("pre_tokenizer", Json::MakeObject({{"type", "Sequence"},
                                              {"pretokenizers", Json::MakeArray({byte_level})}}));
  auto tokenizer = BpeTokenizer::FromJson(json, "pairs");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->Encode("hello world"), (std::vector<int32_t>{258, 'o', 261, 'l', 'd'}));
}

}  // namespace
}  // namespace moe
