// Writes and reads safetensors and .npy files with our code, for
// safetensors_interop.py to check against the Python packages. Every command
// prints a JSON manifest on stdout: per tensor its name, dtype, shape and the
// hex of its bytes, so the script can compare bytes exactly.
//
//   safetensors_tool write-safetensors PATH [--without-bf16]
//   safetensors_tool dump-safetensors PATH
//   safetensors_tool write-npy DIR
//   safetensors_tool dump-npy PATH
//
// Exit code 0 on success; 1 with the error on stderr otherwise.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/io/npy.h"
#include "core/io/safetensors.h"
#include "core/json.h"

namespace moe {
namespace {

std::string Hex(const Tensor& t) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  const auto* bytes = static_cast<const unsigned char*>(t.raw_data());
  for (size_t i = 0; i < t.nbytes(); ++i) {
    out.push_back(kDigits[bytes[i] >> 4]);
    out.push_back(kDigits[bytes[i] & 15]);
  }
  return out;
}

Json Describe(const std::string& name, const Tensor& t) {
  Json shape = Json::MakeArray();
  for (int64_t d : t.shape()) shape.Append(d);
  return Json::MakeObject({{"name", name},
                           {"dtype", SafetensorsDTypeName(t.dtype())},
                           {"shape", std::move(shape)},
                           {"hex", Hex(t)}});
}

// Values that catch byte-order, rounding and sign mistakes: negative zero,
// infinities, NaN, subnormals, integers beyond 2^53.
std::vector<std::pair<std::string, Tensor>> SampleTensors(bool with_bf16) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  const float inf = std::numeric_limits<float>::infinity();
  if (with_bf16) {
    // 5 elements = 10 bytes first, so every later tensor starts unaligned.
    tensors.emplace_back(
        "model.bf16.odd",
        Tensor::FromVector({5}, {1.0f, -2.5f, 3.140625f, -0.0f, 65280.0f}, DType::kBF16));
  }
  tensors.emplace_back(
      "model.layers.0.weight",
      Tensor::FromVector({2, 3}, {0.1f, -0.0f, inf, -inf, 1e-42f, 3.4028235e38f}, DType::kF32));
  Tensor nan = Tensor::FromVector({1}, {std::nanf("")}, DType::kF32);
  tensors.emplace_back("nan", nan);
  Tensor f64 = Tensor::Empty({2, 2}, DType::kF64);
  const double f64_values[] = {1.0 / 3.0, -1e300, 5e-324, 2.0};
  std::memcpy(f64.raw_data(), f64_values, sizeof(f64_values));
  tensors.emplace_back("f64", f64);
  Tensor i32 = Tensor::Empty({3}, DType::kI32);
  const int32_t i32_values[] = {std::numeric_limits<int32_t>::min(), -1, 65535};
  std::memcpy(i32.raw_data(), i32_values, sizeof(i32_values));
  tensors.emplace_back("ids.i32", i32);
  Tensor i64 = Tensor::Empty({2, 1, 2}, DType::kI64);
  const int64_t i64_values[] = {std::numeric_limits<int64_t>::min(), (int64_t{1} << 53) + 1, -7,
                                std::numeric_limits<int64_t>::max()};
  std::memcpy(i64.raw_data(), i64_values, sizeof(i64_values));
  tensors.emplace_back("ids.i64", i64);
  tensors.emplace_back("scalar.f32", Tensor::FromVector({}, {42.5f}, DType::kF32));
  Tensor scalar_i64 = Tensor::Empty({}, DType::kI64);
  scalar_i64.data<int64_t>()[0] = -123456789012345;
  tensors.emplace_back("scalar.i64", scalar_i64);
  tensors.emplace_back("empty.f32", Tensor::Zeros({0, 4}, DType::kF32));
  tensors.emplace_back("empty.i32", Tensor::Zeros({3, 0, 2}, DType::kI32));
  if (with_bf16) {
    tensors.emplace_back("scalar.bf16", Tensor::FromVector({}, {-0.0078125f}, DType::kBF16));
  }
  return tensors;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
  return 1;
}

int Print(const Json& manifest) {
  std::printf("%s\n", manifest.Dump().c_str());
  return 0;
}

int WriteSafetensorsCommand(const std::string& path, bool with_bf16) {
  const auto tensors = SampleTensors(with_bf16);
  const std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                       {"origin", "moe \xC3\xA9 \"quoted\""}};
  if (absl::Status s = WriteSafetensors(path, tensors, metadata); !s.ok()) return Fail(s);
  Json manifest =
      Json::MakeObject({{"metadata", Json::MakeObject()}, {"tensors", Json::MakeArray()}});
  for (const auto& [key, value] : metadata) manifest.Find("metadata")->Set(key, value);
  for (const auto& [name, t] : tensors) manifest.Find("tensors")->Append(Describe(name, t));
  return Print(manifest);
}

int DumpSafetensorsCommand(const std::string& path) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  if (!file.ok()) return Fail(file.status());
  Json manifest =
      Json::MakeObject({{"metadata", Json::MakeObject()}, {"tensors", Json::MakeArray()}});
  for (const auto& [key, value] : file->metadata()) manifest.Find("metadata")->Set(key, value);
  for (const std::string& name : file->names()) {
    absl::StatusOr<Tensor> t = file->Read(name);
    if (!t.ok()) return Fail(t.status());
    manifest.Find("tensors")->Append(Describe(name, *t));
  }
  return Print(manifest);
}

int WriteNpyCommand(const std::string& dir) {
  Json manifest = Json::MakeObject({{"tensors", Json::MakeArray()}});
  for (const auto& [name, t] : SampleTensors(/*with_bf16=*/false)) {
    const std::string path = dir + "/" + name + ".npy";
    if (absl::Status s = WriteNpy(path, t); !s.ok()) return Fail(s);
    Json entry = Describe(name, t);
    entry.Set("file", path);
    manifest.Find("tensors")->Append(std::move(entry));
  }
  return Print(manifest);
}

int DumpNpyCommand(const std::string& path) {
  absl::StatusOr<Tensor> t = ReadNpy(path);
  if (!t.ok()) return Fail(t.status());
  return Print(Json::MakeObject({{"tensors", Json::MakeArray({Describe(path, *t)})}}));
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() >= 2) {
    const std::string& command = args[0];
    if (command == "write-safetensors") {
      return moe::WriteSafetensorsCommand(args[1],
                                          !(args.size() > 2 && args[2] == "--without-bf16"));
    }
    if (command == "dump-safetensors") return moe::DumpSafetensorsCommand(args[1]);
    if (command == "write-npy") return moe::WriteNpyCommand(args[1]);
    if (command == "dump-npy") return moe::DumpNpyCommand(args[1]);
  }
  std::fprintf(stderr,
               "usage: safetensors_tool write-safetensors PATH [--without-bf16] | "
               "dump-safetensors PATH | write-npy DIR | dump-npy PATH\n");
  return 2;
}
