#include "core/data/bpe_tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <limits>
#include <queue>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/data/unicode.h"

namespace moe {
namespace {

absl::Status Unsupported(const std::string& source, const std::string& detail) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": cannot load this tokenizer.json: ", detail));
}

std::string TypeOf(const Json* step) {
  if (step == nullptr || !step->is_object()) return "";
  const Json* type = step->Find("type");
  return type != nullptr && type->is_string() ? type->as_string() : "";
}

bool BoolField(const Json& object, std::string_view key, bool fallback) {
  const Json* value = object.Find(key);
  return value != nullptr && value->is_bool() ? value->as_bool() : fallback;
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
// others (controls, space, soft hyphen) for U+0100 onwards, in byte order.
const std::array<std::string, 256>& ByteChars() {
  static const std::array<std::string, 256> chars = [] {
    std::array<std::string, 256> table;
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      AppendUtf8(printable ? b : next++, &table[b]);
    }
    return table;
  }();
  return chars;
}

bool IsWhitespace(std::string_view text, size_t pos, int* length) {
  return ClassifyCodePoint(DecodeUtf8(text, pos, length)) == CharClass::kWhitespace;
}

// Start of the whitespace run that ends `text` (the regex \s*$), scanning
// backwards one code point at a time.
size_t TrailingWhitespaceStart(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t begin = end - 1;
    while (begin > 0 && end - begin < 4 && (static_cast<uint8_t>(text[begin]) & 0xC0) == 0x80) {
      --begin;
    }
    int length = 1;
    if (!IsWhitespace(text, begin, &length) || begin + static_cast<size_t>(length) != end) break;
    end = begin;
  }
  return end;
}

// Length of the whitespace run that starts `text` (the regex ^\s*).
size_t LeadingWhitespaceLength(std::string_view text) {
  size_t pos = 0;
  int length = 1;
  while (pos < text.size() && IsWhitespace(text, pos, &length)) pos += static_cast<size_t>(length);
  return pos;
}

}  // namespace

// ---------------------------------------------------------------------------
// Loading

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromFile(const std::string& path) {
  absl::StatusOr<Json> json = ReadJsonFile(path);
  if (!json.ok()) return json.status();
  return FromJson(*json, path);
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromJson(const Json& json,
                                                                     const std::string& source) {
  if (!json.is_object()) {
    return Unsupported(source, absl::StrCat("expected a JSON object, got a ", json.type_name()));
  }
  std::unique_ptr<BpeTokenizer> tokenizer(new BpeTokenizer());
  tokenizer->source_ = source;

  const Json* normalizer = json.Find("normalizer");
  if (normalizer != nullptr && !normalizer->is_null()) {
    return Unsupported(source, absl::StrCat("normalizer \"", TypeOf(normalizer),
                                            "\" is not supported (only null)"));
  }
  const Json* truncation = json.Find("truncation");
  if (truncation != nullptr && !truncation->is_null()) {
    return Unsupported(source, "truncation is set; preprocessing keeps whole documents");
  }
  const Json* pre = json.Find("pre_tokenizer");
  if (TypeOf(pre) == "Sequence") {
    const Json* steps = pre->Find("pretokenizers");
    if (steps != nullptr && steps->is_array() && steps->size() == 1) pre = &steps->as_array()[0];
  }
  if (TypeOf(pre) != "ByteLevel") {
    return Unsupported(source,
                       absl::StrCat("pre_tokenizer \"", TypeOf(pre),
                                    "\" is not supported; this reader handles byte-level BPE "
                                    "tokenizers whose pre_tokenizer is ByteLevel"));
  }
  tokenizer->add_prefix_space_ = BoolField(*pre, "add_prefix_space", true);
  tokenizer->use_regex_ = BoolField(*pre, "use_regex", true);
  const Json* post = json.Find("post_processor");
  if (post != nullptr && !post->is_null() && TypeOf(post) != "ByteLevel") {
    return Unsupported(source, absl::StrCat("post_processor \"", TypeOf(post),
                                            "\" is not supported (it may add tokens); only "
                                            "null or ByteLevel"));
  }

  const Json* model = json.Find("model");
  if (model == nullptr || !model->is_object()) {
    return Unsupported(source, "no \"model\" object");
  }
  if (absl::Status s = tokenizer->LoadModel(*model); !s.ok()) return s;
  if (const Json* added = json.Find("added_tokens"); added != nullptr && !added->is_null()) {
    if (absl::Status s = tokenizer->LoadAddedTokens(*added); !s.ok()) return s;
  }

  for (const char* candidate : {"<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"}) {
    for (const AddedToken& token : tokenizer->added_tokens_) {
      if (token.content == candidate) tokenizer->eod_id_ = token.id;
    }
    if (tokenizer->eod_id_ < 0) tokenizer->eod_id_ = tokenizer->LookUp(candidate);
    if (tokenizer->eod_id_ >= 0) break;
  }
  return tokenizer;
}

int32_t BpeTokenizer::LookUp(const std::string& token) const {
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

absl::Status BpeTokenizer::LoadModel(const Json& model) {
  const std::string type = TypeOf(&model);
  if (!type.empty() && type != "BPE") {
    return Unsupported(source_, absl::StrCat("model.type is \"", type, "\"; only BPE"));
  }
  if (const Json* dropout = model.Find("dropout");
      dropout != nullptr && !dropout->is_null() &&
      !(dropout->is_number() && dropout->as_double() == 0.0)) {
    return Unsupported(source_, "model.dropout is set; BPE dropout makes encoding random");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const Json* value = model.Find(key);
    if (value != nullptr && !value->is_null() &&
        !(value->is_string() && value->as_string().empty())) {
      return Unsupported(source_, absl::StrCat("model.", key, " is not supported"));
    }
  }
  fuse_unk_ = BoolField(model, "fuse_unk", false);
  ignore_merges_ = BoolField(model, "ignore_merges", false);
  const bool byte_fallback = BoolField(model, "byte_fallback", false);

  const Json* vocab = model.Find("vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return Unsupported(source_, "model.vocab must be an object of token -> id");
  }
  vocab_.reserve(vocab->size());
  for (const auto& [token, id] : vocab->as_object()) {
    if (!id.is_int() || id.as_int() < 0 || id.as_int() > std::numeric_limits<int32_t>::max()) {
      return Unsupported(
          source_, absl::StrCat("model.vocab[\"", token, "\"] must be an integer id in [0, 2^31)"));
    }
    vocab_[token] = static_cast<int32_t>(id.as_int());
    vocab_size_ = std::max<int64_t>(vocab_size_, id.as_int() + 1);
  }

  const Json* merges = model.Find("merges");
  if (merges == nullptr || !merges->is_array()) {
    return Unsupported(source_, "model.merges must be an array");
  }
  merges_.reserve(merges->size());
  int32_t rank = 0;
  for (const Json& merge : merges->as_array()) {
    std::string left;
    std::string right;
    if (merge.is_string()) {
      const std::string& text = merge.as_string();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        return Unsupported(source_, absl::StrCat("model.merges[", rank, "] = \"", text,
                                                 "\" is not two tokens separated by a space"));
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge.as_array()[0].is_string() &&
               merge.as_array()[1].is_string()) {
      left = merge.as_array()[0].as_string();
      right = merge.as_array()[1].as_string();
    } else {
      return Unsupported(
          source_, absl::StrCat("model.merges[", rank, "] must be \"a b\" or [\"a\", \"b\"]"));
    }
    const int32_t a = LookUp(left);
    const int32_t b = LookUp(right);
    const int32_t merged = LookUp(left + right);
    if (a < 0 || b < 0 || merged < 0) {
      return Unsupported(
          source_,
          absl::StrCat("model.merges[", rank, "] (\"", left, "\", \"", right, "\"): \"",
                       a < 0 ? left : (b < 0 ? right : left + right), "\" is not in model.vocab"));
    }
    // A repeated pair keeps its last rank, as in the reference's map.
    merges_[(static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b)] = Merge{rank, merged};
    ++rank;
  }

  unk_id_ = -1;
  if (const Json* unk = model.Find("unk_token"); unk != nullptr && !unk->is_null()) {
    if (!unk->is_string() || LookUp(unk->as_string()) < 0) {
      return Unsupported(source_, "model.unk_token is not a token of model.vocab");
    }
    unk_id_ = LookUp(unk->as_string());
  }
  const std::array<std::string, 256>& chars = ByteChars();
  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = LookUp(chars[b]);
    fallback_ids_[b].clear();
    if (!byte_fallback) continue;
    for (const char c : chars[b]) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", static_cast<unsigned>(static_cast<uint8_t>(c)));
      const int32_t id = LookUp(name);
      if (id < 0) {
        fallback_ids_[b].clear();
        break;
      }
      fallback_ids_[b].push_back(id);
    }
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::LoadAddedTokens(const Json& added) {
  if (!added.is_array()) return Unsupported(source_, "added_tokens must be an array");
  for (const Json& entry : added.as_array()) {
    const Json* content = entry.is_object() ? entry.Find("content") : nullptr;
    const Json* id = entry.is_object() ? entry.Find("id") : nullptr;
    if (content == nullptr || !content->is_string() || id == nullptr || !id->is_int() ||
        id->as_int() < 0 || id->as_int() > std::numeric_limits<int32_t>::max()) {
      return Unsupported(source_,
                         "each added_tokens entry needs a string \"content\" and an "
                         "integer \"id\" in [0, 2^31)");
    }
    if (content->as_string().empty()) continue;  // the reference ignores these too
    if (BoolField(entry, "single_word", false)) {
      return Unsupported(source_, absl::StrCat("added token \"", content->as_string(),
                                               "\" has single_word = true, which is not "
                                               "supported"));
    }
    AddedToken token;
    token.content = content->as_string();
    token.id = static_cast<int32_t>(id->as_int());
    token.lstrip = BoolField(entry, "lstrip", false);
    token.rstrip = BoolField(entry, "rstrip", false);
    token.normalized = BoolField(entry, "normalized", !BoolField(entry, "special", false));
    added_tokens_.push_back(std::move(token));
    vocab_size_ = std::max<int64_t>(vocab_size_, id->as_int() + 1);
  }
  for (const AddedToken& token : added_tokens_) {
    (token.normalized ? normalized_tokens_ : raw_tokens_).push_back(&token);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Encoding

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text) const {
  std::vector<Piece> pieces = {Piece{text, -1}};
  // Without a normalizer both passes see the same text; the reference still
  // matches non-normalized tokens first, which decides overlapping matches.
  SplitAddedTokens(raw_tokens_, &pieces);
  SplitAddedTokens(normalized_tokens_, &pieces);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const Piece& piece : pieces) {
    if (piece.added_id >= 0) {
      ids.push_back(piece.added_id);
    } else {
      EncodePiece(piece.text, &ids);
    }
  }
  return ids;
}

void BpeTokenizer::SplitAddedTokens(const std::vector<const AddedToken*>& tokens,
                                    std::vector<Piece>* pieces) const {
  if (tokens.empty()) return;
  std::array<bool, 256> first_byte{};
  for (const AddedToken* token : tokens) first_byte[static_cast<uint8_t>(token->content[0])] = true;
  std::vector<Piece> out;
  for (const Piece& piece : *pieces) {
    const std::string_view text = piece.text;
    if (piece.added_id >= 0 || text.empty()) {
      out.push_back(piece);
      continue;
    }
    size_t emitted = 0;  // end of the last piece pushed
    size_t pos = 0;
    while (pos < text.size()) {
      if (!first_byte[static_cast<uint8_t>(text[pos])]) {
        ++pos;
        continue;
      }
      // Leftmost-longest, as the reference's Aho-Corasick automaton.
      const AddedToken* best = nullptr;
      for (const AddedToken* token : tokens) {
        if (text.compare(pos, token->content.size(), token->content) == 0 &&
            (best == nullptr || token->content.size() > best->content.size())) {
          best = token;
        }
      }
      if (best == nullptr) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t stop = pos + best->content.size();
      if (best->lstrip) start = std::max(TrailingWhitespaceStart(text.substr(0, start)), emitted);
      if (best->rstrip) stop += LeadingWhitespaceLength(text.substr(stop));
      if (emitted < start) out.push_back(Piece{text.substr(emitted, start - emitted), -1});
      out.push_back(Piece{text.substr(start, stop - start), best->id});
      emitted = stop;
      pos = std::max(stop, pos + best->content.size());
    }
    if (emitted < text.size()) out.push_back(Piece{text.substr(emitted), -1});
  }
  *pieces = std::move(out);
}

void BpeTokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* out) const {
  // The reference encodes an empty text as nothing, even with add_prefix_space.
  if (piece.empty()) return;
  std::string prefixed;
  if (add_prefix_space_ && piece.front() != ' ') {
    prefixed = std::string(" ").append(piece);
    piece = prefixed;
  }
  if (!use_regex_) {
    EncodeWord(piece, out);
    return;
  }
  for (const std::string_view word : SplitGpt2(piece)) EncodeWord(word, out);
}

void BpeTokenizer::EncodeWord(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  const std::array<std::string, 256>& chars = ByteChars();
  if (ignore_merges_) {
    std::string mapped;
    for (const char c : word) mapped += chars[static_cast<uint8_t>(c)];
    if (const int32_t id = LookUp(mapped); id >= 0) {
      out->push_back(id);
      return;
    }
  }
  // Initial symbols, with the reference's handling of characters missing from
  // the vocabulary: byte fallback, else the unknown token (consecutive ones
  // fused if fuse_unk), else dropped.
  std::vector<int32_t> symbols;
  symbols.reserve(word.size());
  bool pending_unk = false;
  for (const char c : word) {
    const auto b = static_cast<uint8_t>(c);
    if (byte_ids_[b] >= 0) {
      if (pending_unk) symbols.push_back(unk_id_);
      pending_unk = false;
      symbols.push_back(byte_ids_[b]);
      continue;
    }
    if (!fallback_ids_[b].empty()) {
      symbols.insert(symbols.end(), fallback_ids_[b].begin(), fallback_ids_[b].end());
      continue;
    }
    if (unk_id_ < 0) continue;
    if (pending_unk && !fuse_unk_) symbols.push_back(unk_id_);
    pending_unk = true;
  }
  if (pending_unk) symbols.push_back(unk_id_);

  MergeSymbols(&symbols);
  out->insert(out->end(), symbols.begin(), symbols.end());
}

const BpeTokenizer::Merge* BpeTokenizer::FindMerge(int32_t left, int32_t right) const {
  const auto it = merges_.find((static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeTokenizer::MergeSymbols(std::vector<int32_t>* ids) const {
  // Merges the lowest-ranked adjacent pair, leftmost on ties, until none is
  // left, as the reference does: a heap of candidate pairs over a linked list
  // of symbols, so that long words (minified code, base64) stay O(n log n).
  const int n = static_cast<int>(ids->size());
  if (n < 2) return;
  std::vector<int32_t>& id = *ids;
  std::vector<int> prev(static_cast<size_t>(n));
  std::vector<int> next(static_cast<size_t>(n));
  std::vector<bool> alive(static_cast<size_t>(n), true);
  for (int i = 0; i < n; ++i) {
    prev[static_cast<size_t>(i)] = i - 1;
    next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
  }
  // (rank, position of the left symbol, id of the merged token); smallest first.
  using Candidate = std::tuple<int32_t, int, int32_t>;
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  const auto push = [&](int left) {
    if (left < 0) return;
    const int right = next[static_cast<size_t>(left)];
    if (right < 0) return;
    if (const Merge* m = FindMerge(id[static_cast<size_t>(left)], id[static_cast<size_t>(right)])) {
      heap.emplace(m->rank, left, m->id);
    }
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const auto [rank, left, merged] = heap.top();
    heap.pop();
    const auto l = static_cast<size_t>(left);
    const int right = next[l];
    // Skip candidates that earlier merges made stale.
    if (!alive[l] || right < 0) continue;
    const Merge* m = FindMerge(id[l], id[static_cast<size_t>(right)]);
    if (m == nullptr || m->id != merged) continue;
    id[l] = merged;
    alive[static_cast<size_t>(right)] = false;
    next[l] = next[static_cast<size_t>(right)];
    if (next[l] >= 0) prev[static_cast<size_t>(next[l])] = left;
    if (prev[l] >= 0) push(prev[l]);
    push(left);
  }
  std::vector<int32_t> merged_ids;
  for (int i = 0; i >= 0; i = next[static_cast<size_t>(i)])
    merged_ids.push_back(id[static_cast<size_t>(i)]);
  *ids = std::move(merged_ids);
}

std::vector<std::string_view> BpeTokenizer::SplitGpt2(std::string_view text) {
  // Code points with their byte offsets and classes; offsets has one extra
  // entry, the end of the text.
  std::vector<uint32_t> cps;
  std::vector<CharClass> cls;
  std::vector<size_t> offsets;
  for (size_t pos = 0; pos < text.size();) {
    int length = 1;
    const uint32_t cp = DecodeUtf8(text, pos, &length);
    cps.push_back(cp);
    cls.push_back(ClassifyCodePoint(cp));
    offsets.push_back(pos);
    pos += static_cast<size_t>(length);
  }
  offsets.push_back(text.size());
  const size_t n = cps.size();
  const auto run_end = [&](size_t i, CharClass c) {
    while (i < n && cls[i] == c) ++i;
    return i;
  };

  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < n) {
    size_t end = i;
    // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive, ASCII apostrophe only).
    if (cps[i] == '\'' && i + 1 < n) {
      const uint32_t c1 = cps[i + 1];
      const uint32_t c2 = i + 2 < n ? cps[i + 2] : 0;
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        end = i + 2;
      } else if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
        end = i + 3;
      }
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional space, then a
    // run of one class.
    if (end == i) {
      const size_t first =
          (cps[i] == ' ' && i + 1 < n && cls[i + 1] != CharClass::kWhitespace) ? i + 1 : i;
      if (cls[first] != CharClass::kWhitespace) end = run_end(first, cls[first]);
    }
    // `\s+(?!\S)` then `\s+`: a whitespace run; when a non-space follows it,
    // its last character is left to start the next word (if the run has more
    // than one).
    if (end == i) {
      end = run_end(i, CharClass::kWhitespace);
      if (end < n && end - i >= 2) --end;
    }
    words.push_back(text.substr(offsets[i], offsets[end] - offsets[i]));
    i = end;
  }
  return words;
}

}  // namespace moe
