// moe-preprocess: text to Megatron-compatible indexed datasets (.bin/.idx).
//
//   moe-preprocess --input=a.jsonl,b.txt --output_prefix=data/corpus
//       [--tokenizer=byte|path/to/tokenizer.json] [--json_keys=text] [--append_eod]
//
// Inputs ending in .jsonl or .json hold one JSON object per line (Megatron's
// preprocess_data.py input); the text of each key in --json_keys is a
// document (a list of strings is a document of several sequences, as
// Megatron's sentence-split input). Any other file is one plain-text document.
// Each key gets its own data set, named as Megatron names it:
// {output_prefix}_{key}_document.bin/.idx.
//
// Every input is read and checked (files exist, each line is a JSON object
// with the keys, texts are UTF-8) before anything is written, so a bad line
// is reported with its number and no output is touched. Outputs are written
// under temporary names and renamed into place at the end.
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/data/indexed_dataset.h"
#include "core/data/tokenizer.h"
#include "core/io/file_util.h"
#include "core/json.h"

ABSL_FLAG(std::string, input, "",
          "Comma-separated input files. .jsonl/.json: one JSON object per line, the text under "
          "each of --json_keys is a document; any other file: one plain-text document.");
ABSL_FLAG(std::string, output_prefix, "",
          "Output path prefix; writes {prefix}_{key}_document.bin and .idx per JSON key.");
ABSL_FLAG(std::string, tokenizer, "byte",
          "\"byte\" (UTF-8 bytes, EOD 256) or the path of a Hugging Face tokenizer.json "
          "(byte-level BPE).");
ABSL_FLAG(std::string, json_keys, "text", "Comma-separated JSON keys to extract.");
ABSL_FLAG(bool, append_eod, false, "Append the end-of-document token to every non-empty document.");

namespace moe {
namespace {

constexpr int kMaxErrorsShown = 20;

bool IsJsonl(const std::string& path) {
  const auto ends_with = [&](std::string_view suffix) {
    return path.size() >= suffix.size() &&
           path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".jsonl") || ends_with(".json");
}

// The texts of one document: one string, or a list (one sequence each).
using Texts = std::vector<std::string>;

// Reads the document texts of each key from one JSON line. Errors name the
// file, the line and the key.
absl::Status TextsOfLine(const std::string& line, const std::string& where,
                         const std::vector<std::string>& keys, std::vector<Texts>* texts) {
  absl::StatusOr<Json> json = ParseJson(line, where);
  if (!json.ok()) return json.status();
  if (!json->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected a JSON object, got a JSON ", json->type_name()));
  }
  texts->assign(keys.size(), {});
  for (size_t k = 0; k < keys.size(); ++k) {
    const Json* value = json->Find(keys[k]);
    if (value == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": no key \"", keys[k], "\" (set --json_keys to the keys your data uses)"));
    }
    if (value->is_string()) {
      (*texts)[k].push_back(value->as_string());
      continue;
    }
    bool all_strings = value->is_array();
    if (all_strings) {
      for (const Json& item : value->as_array()) all_strings = all_strings && item.is_string();
    }
    if (!all_strings) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": \"", keys[k],
                                                     "\" must be a string or a list of strings, "
                                                     "got a JSON ",
                                                     value->type_name()));
    }
    for (const Json& item : value->as_array()) (*texts)[k].push_back(item.as_string());
  }
  return absl::OkStatus();
}

// Calls `document(texts)` for every document of `path`, in order. Returns the
// first error; with `errors` set, collects every error instead (for the check
// pass) and returns OK.
template <typename Fn>
absl::Status ForEachDocument(const std::string& path, const std::vector<std::string>& keys,
                             std::vector<std::string>* errors, Fn&& document) {
  if (!IsJsonl(path)) {
    absl::StatusOr<std::string> text = ReadFileToString(path);
    if (!text.ok()) return text.status();
    if (keys.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(path,
                       " is plain text (one document), which fits only one --json_keys "
                       "entry, but ",
                       keys.size(), " are given"));
    }
    if (!IsValidUtf8(*text)) {
      return absl::InvalidArgumentError(absl::StrCat(path, " is not valid UTF-8"));
    }
    std::vector<Texts> texts = {{*std::move(text)}};
    return document(texts);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot open ", path, " for reading; check that the path is right"));
  }
  std::string line;
  std::vector<Texts> texts;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    const std::string where = absl::StrCat(path, " line ", number);
    absl::Status status = TextsOfLine(line, where, keys, &texts);
    if (status.ok()) status = document(texts);
    if (!status.ok()) {
      if (errors == nullptr) return status;
      errors->push_back(std::string(status.message()));
    }
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("reading ", path, " failed"));
  return absl::OkStatus();
}

struct Output {
  std::string key;
  std::string prefix;
  std::unique_ptr<IndexedDatasetWriter> writer;
};

int Run() {
  const std::string input_flag = absl::GetFlag(FLAGS_input);
  const std::string output_prefix = absl::GetFlag(FLAGS_output_prefix);
  const bool append_eod = absl::GetFlag(FLAGS_append_eod);
  std::vector<std::string> inputs = absl::StrSplit(input_flag, ',', absl::SkipEmpty());
  std::vector<std::string> keys =
      absl::StrSplit(absl::GetFlag(FLAGS_json_keys), ',', absl::SkipEmpty());
  if (inputs.empty() || output_prefix.empty()) {
    std::fprintf(stderr, "moe-preprocess: --input and --output_prefix are required; see --help\n");
    return 2;
  }
  if (keys.empty()) {
    std::fprintf(stderr, "moe-preprocess: --json_keys is empty\n");
    return 2;
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (keys[i] == keys[j]) {
        std::fprintf(stderr, "moe-preprocess: --json_keys names \"%s\" twice\n", keys[i].c_str());
        return 2;
      }
    }
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      MakeTokenizer(absl::GetFlag(FLAGS_tokenizer));
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "moe-preprocess: %s\n", std::string(tokenizer.status().message()).c_str());
    return 1;
  }
  const Tokenizer& tok = **tokenizer;
  if (append_eod && tok.eod_id() < 0) {
    std::fprintf(stderr,
                 "moe-preprocess: --append_eod, but tokenizer %s has no end-of-document token "
                 "(looked for <|endoftext|>, </s>, <|end_of_text|>, <eos>)\n",
                 tok.name().c_str());
    return 1;
  }

  // Pass 1: check every input before writing anything.
  std::vector<std::string> errors;
  int64_t documents = 0;
  for (const std::string& path : inputs) {
    absl::Status status =
        ForEachDocument(path, keys, &errors, [&](const std::vector<Texts>& texts) {
          for (const Texts& key_texts : texts) {
            for (const std::string& text : key_texts) {
              if (!IsValidUtf8(text)) return absl::InvalidArgumentError("text is not valid UTF-8");
            }
          }
          ++documents;
          return absl::OkStatus();
        });
    if (!status.ok()) errors.push_back(std::string(status.message()));
  }
  if (!errors.empty()) {
    for (size_t i = 0; i < errors.size() && i < kMaxErrorsShown; ++i) {
      std::fprintf(stderr, "moe-preprocess: %s\n", errors[i].c_str());
    }
    if (errors.size() > kMaxErrorsShown) {
      std::fprintf(stderr, "moe-preprocess: ... and %zu more errors\n",
                   errors.size() - kMaxErrorsShown);
    }
    std::fprintf(stderr, "moe-preprocess: %zu error(s); nothing was written\n", errors.size());
    return 1;
  }

  // Pass 2: tokenize and write.
  const TokenDtype dtype = TokenDtypeForVocab(tok.vocab_size());
  std::vector<Output> outputs;
  for (const std::string& key : keys) {
    Output output;
    output.key = key;
    output.prefix = absl::StrCat(output_prefix, "_", key, "_document");
    absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> writer =
        IndexedDatasetWriter::Create(output.prefix, dtype);
    if (!writer.ok()) {
      std::fprintf(stderr, "moe-preprocess: %s\n", std::string(writer.status().message()).c_str());
      return 1;
    }
    output.writer = *std::move(writer);
    outputs.push_back(std::move(output));
  }
  std::vector<int32_t> tokens;
  std::vector<int64_t> lengths;
  for (const std::string& path : inputs) {
    absl::Status status =
        ForEachDocument(path, keys, nullptr, [&](const std::vector<Texts>& texts) {
          for (size_t k = 0; k < keys.size(); ++k) {
            tokens.clear();
            lengths.clear();
            // As Megatron: empty sequences are dropped, and an empty document
            // gets no end-of-document token.
            for (const std::string& text : texts[k]) {
              const std::vector<int32_t> ids = tok.Encode(text);
              if (ids.empty()) continue;
              tokens.insert(tokens.end(), ids.begin(), ids.end());
              lengths.push_back(static_cast<int64_t>(ids.size()));
            }
            if (append_eod && !tokens.empty()) {
              tokens.push_back(tok.eod_id());
              ++lengths.back();
            }
            if (absl::Status s = outputs[k].writer->AddDocument(tokens, lengths); !s.ok()) return s;
          }
          return absl::OkStatus();
        });
    if (!status.ok()) {
      std::fprintf(stderr, "moe-preprocess: %s; nothing was written\n",
                   std::string(status.message()).c_str());
      return 1;
    }
  }
  for (Output& output : outputs) {
    if (absl::Status s = output.writer->Finalize(); !s.ok()) {
      std::fprintf(stderr, "moe-preprocess: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  std::printf("moe-preprocess: %zu input file(s), %lld documents, tokenizer %s (vocab %lld, %s)\n",
              inputs.size(), static_cast<long long>(documents), tok.name().c_str(),
              static_cast<long long>(tok.vocab_size()),
              TokenDtypeName(static_cast<uint8_t>(dtype)));
  for (const Output& output : outputs) {
    std::printf("  key \"%s\": %lld documents, %lld sequences, %lld tokens -> %s, %s\n",
                output.key.c_str(), static_cast<long long>(output.writer->num_documents()),
                static_cast<long long>(output.writer->num_sequences()),
                static_cast<long long>(output.writer->num_tokens()),
                IndexedDatasetBinPath(output.prefix).c_str(),
                IndexedDatasetIdxPath(output.prefix).c_str());
  }
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Tokenizes text into Megatron indexed datasets.\n"
      "  moe-preprocess --input=FILE[,FILE...] --output_prefix=PREFIX "
      "[--tokenizer=byte|TOKENIZER_JSON] [--json_keys=text] [--append_eod]");
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::fprintf(stderr, "moe-preprocess: unexpected argument \"%s\"; inputs go in --input\n",
                 positional[1]);
    return 2;
  }
  return moe::Run();
}
