// Drives our data code from the Python reference checks.
//
//   data_tool write PREFIX DTYPE_CODE DOCS_JSON
//       DOCS_JSON: [[[tokens of sequence], ...] per document]; an empty
//       document is []. Writes PREFIX.bin/.idx with IndexedDatasetWriter.
//   data_tool dump PREFIX
//       Prints {"dtype", "lengths", "pointers", "document_indices",
//       "sequences"} read by IndexedDataset; on an error prints it to stderr
//       and exits 1.
//   data_tool encode TOKENIZER TEXTS_JSON
//       TEXTS_JSON: a list of strings. Prints {"vocab_size", "eod_id",
//       "ids": [[...] per text]}.
#include <cstdio>
#include <string>
#include <vector>

#include "core/data/indexed_dataset.h"
#include "core/data/tokenizer.h"
#include "core/json.h"

namespace moe {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
  return 1;
}

int Write(const std::string& prefix, int code, const std::string& docs_path) {
  absl::StatusOr<Json> docs = ReadJsonFile(docs_path);
  if (!docs.ok()) return Fail(docs.status());
  absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> writer =
      IndexedDatasetWriter::Create(prefix, static_cast<TokenDtype>(code));
  if (!writer.ok()) return Fail(writer.status());
  for (const Json& doc : docs->as_array()) {
    std::vector<int32_t> tokens;
    std::vector<int64_t> lengths;
    for (const Json& seq : doc.as_array()) {
      for (const Json& t : seq.as_array()) tokens.push_back(static_cast<int32_t>(t.as_int()));
      lengths.push_back(static_cast<int64_t>(seq.size()));
    }
    if (absl::Status s = (*writer)->AddDocument(tokens, lengths); !s.ok()) return Fail(s);
  }
  if (absl::Status s = (*writer)->Finalize(); !s.ok()) return Fail(s);
  return 0;
}

int Dump(const std::string& prefix) {
  absl::StatusOr<IndexedDataset> dataset = IndexedDataset::Open(prefix);
  if (!dataset.ok()) return Fail(dataset.status());
  Json out = Json::MakeObject();
  out.Set("dtype", static_cast<int>(dataset->dtype()));
  Json lengths = Json::MakeArray();
  Json pointers = Json::MakeArray();
  Json docs = Json::MakeArray();
  Json sequences = Json::MakeArray();
  for (int64_t i = 0; i < dataset->num_sequences(); ++i) {
    lengths.Append(dataset->sequence_length(i));
    pointers.Append(dataset->sequence_pointers()[static_cast<size_t>(i)]);
    std::vector<int32_t> tokens(static_cast<size_t>(dataset->sequence_length(i)));
    if (absl::Status s = dataset->ReadTokens(i, 0, dataset->sequence_length(i), tokens.data());
        !s.ok()) {
      return Fail(s);
    }
    Json seq = Json::MakeArray();
    for (const int32_t t : tokens) seq.Append(t);
    sequences.Append(std::move(seq));
  }
  for (const int64_t d : dataset->document_indices()) docs.Append(d);
  out.Set("lengths", std::move(lengths));
  out.Set("pointers", std::move(pointers));
  out.Set("document_indices", std::move(docs));
  out.Set("sequences", std::move(sequences));
  std::printf("%s\n", out.Dump().c_str());
  return 0;
}

int Encode(const std::string& spec, const std::string& texts_path) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = MakeTokenizer(spec);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  absl::StatusOr<Json> texts = ReadJsonFile(texts_path);
  if (!texts.ok()) return Fail(texts.status());
  Json ids = Json::MakeArray();
  for (const Json& text : texts->as_array()) {
    Json row = Json::MakeArray();
    for (const int32_t id : (*tokenizer)->Encode(text.as_string())) row.Append(id);
    ids.Append(std::move(row));
  }
  Json out = Json::MakeObject();
  out.Set("vocab_size", (*tokenizer)->vocab_size());
  out.Set("eod_id", (*tokenizer)->eod_id());
  out.Set("ids", std::move(ids));
  std::printf("%s\n", out.Dump().c_str());
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if (command == "write" && argc == 5) return moe::Write(argv[2], std::stoi(argv[3]), argv[4]);
  if (command == "dump" && argc == 3) return moe::Dump(argv[2]);
  if (command == "encode" && argc == 4) return moe::Encode(argv[2], argv[3]);
  std::fprintf(stderr,
               "usage: data_tool write PREFIX DTYPE_CODE DOCS_JSON | dump PREFIX | "
               "encode TOKENIZER TEXTS_JSON\n");
  return 2;
}
