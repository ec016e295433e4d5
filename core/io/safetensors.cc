#include "core/io/safetensors.h"

#include <algorithm>
#include <bit>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/io/file_util.h"
#include "core/json.h"

namespace moe {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors is little-endian; this reader copies bytes as they are");

// Every dtype of safetensors 0.8, with its size in bits (F4 and F6 pack
// several elements per byte) and the Tensor dtype it loads as, if any.
struct DTypeInfo {
  const char* name;
  uint32_t bits;
  std::optional<DType> dtype;
};
constexpr DTypeInfo kDTypes[] = {
    {"BOOL", 8, std::nullopt},        {"F4", 4, std::nullopt},
    {"F6_E2M3", 6, std::nullopt},     {"F6_E3M2", 6, std::nullopt},
    {"U8", 8, std::nullopt},          {"I8", 8, std::nullopt},
    {"F8_E5M2", 8, std::nullopt},     {"F8_E4M3", 8, std::nullopt},
    {"F8_E8M0", 8, std::nullopt},     {"F8_E4M3FNUZ", 8, std::nullopt},
    {"F8_E5M2FNUZ", 8, std::nullopt}, {"I16", 16, std::nullopt},
    {"U16", 16, std::nullopt},        {"F16", 16, std::nullopt},
    {"BF16", 16, DType::kBF16},       {"I32", 32, DType::kI32},
    {"U32", 32, std::nullopt},        {"F32", 32, DType::kF32},
    {"C64", 64, std::nullopt},        {"F64", 64, DType::kF64},
    {"I64", 64, DType::kI64},         {"U64", 64, std::nullopt},
};

const DTypeInfo* FindDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (std::string_view(info.name) == name) return &info;
  }
  return nullptr;
}

std::string KnownDTypeNames() {
  std::vector<const char*> names;
  for (const DTypeInfo& info : kDTypes) names.push_back(info.name);
  return absl::StrJoin(names, ", ");
}

absl::Status Invalid(const std::string& path, const std::string& detail) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, " is not a valid safetensors file: ", detail,
                   ". The file is damaged or was not written by a safetensors writer; re-create or "
                   "re-download it"));
}

std::string Quoted(std::string_view s) {
  std::string out(1, '"');
  out.append(s.data(), s.size());
  out.push_back('"');
  return out;
}

// A value for an error message, cut short so that a hostile header cannot
// produce a megabyte-long message.
std::string Excerpt(const Json& value) {
  std::string text = value.Dump();
  if (text.size() > 80) text = absl::StrCat(text.substr(0, 77), "...");
  return text;
}

std::string OffsetsText(const SafetensorsEntry& e) {
  return absl::StrCat("[", e.data_begin, ", ", e.data_end, "]");
}

// Validates one tensor's header entry; fills `entry` except its name.
absl::Status ParseEntry(const std::string& path, const std::string& name, const Json& value,
                        SafetensorsEntry* entry) {
  const std::string tensor = absl::StrCat("tensor ", Quoted(name));
  if (!value.is_object()) {
    return Invalid(path, absl::StrCat(tensor,
                                      " must map to an object with dtype, shape and "
                                      "data_offsets, but maps to a JSON ",
                                      value.type_name()));
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (value.Find(field) == nullptr) {
      return Invalid(path, absl::StrCat(tensor, " has no \"", field, "\" field"));
    }
  }
  const Json& dtype = *value.Find("dtype");
  if (!dtype.is_string()) {
    return Invalid(
        path, absl::StrCat(tensor, ": dtype must be a string, got a JSON ", dtype.type_name()));
  }
  const DTypeInfo* info = FindDType(dtype.as_string());
  if (info == nullptr) {
    return Invalid(path, absl::StrCat(tensor, " has unknown dtype ", Quoted(dtype.as_string()),
                                      " (known: ", KnownDTypeNames(), ")"));
  }
  entry->dtype_name = dtype.as_string();
  entry->dtype = info->dtype;

  const Json& shape = *value.Find("shape");
  const std::string shape_error = absl::StrCat(
      tensor, ": shape must be an array of non-negative integers, got ", Excerpt(shape));
  if (!shape.is_array()) return Invalid(path, shape_error);
  // Elements times bits must not overflow: the reference rejects such files too.
  uint64_t numel = 1;
  bool overflow = false;
  for (const Json& d : shape.as_array()) {
    if (!d.is_int() || d.as_int() < 0) return Invalid(path, shape_error);
    entry->shape.push_back(d.as_int());
    overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(d.as_int()), &numel);
  }
  uint64_t bits = 0;
  overflow |= __builtin_mul_overflow(numel, uint64_t{info->bits}, &bits);
  if (overflow || numel > static_cast<uint64_t>(INT64_MAX)) {
    return Invalid(path, absl::StrCat(tensor, ": shape ", Excerpt(shape),
                                      " has more elements than fit in 64 bits"));
  }
  if (bits % 8 != 0) {
    return Invalid(path, absl::StrCat(tensor, ": ", numel, " elements of ", info->name, " (",
                                      info->bits, " bits each) do not fill whole bytes"));
  }

  const Json& offsets = *value.Find("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2 || !offsets.as_array()[0].is_int() ||
      !offsets.as_array()[1].is_int() || offsets.as_array()[0].as_int() < 0 ||
      offsets.as_array()[1].as_int() < offsets.as_array()[0].as_int()) {
    return Invalid(path, absl::StrCat(tensor,
                                      ": data_offsets must be [begin, end] with integers "
                                      "0 <= begin <= end, got ",
                                      Excerpt(offsets)));
  }
  entry->data_begin = static_cast<uint64_t>(offsets.as_array()[0].as_int());
  entry->data_end = static_cast<uint64_t>(offsets.as_array()[1].as_int());
  const uint64_t bytes = bits / 8;
  if (entry->data_end - entry->data_begin != bytes) {
    return Invalid(
        path, absl::StrCat(tensor, ": data_offsets ", OffsetsText(*entry), " span ",
                           entry->data_end - entry->data_begin, " bytes, but ", info->name, " ",
                           ShapeToString(entry->shape), " needs ", bytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status ParseMetadata(const std::string& path, const Json& value,
                           std::map<std::string, std::string>* metadata) {
  if (value.is_null()) return absl::OkStatus();
  if (!value.is_object()) {
    return Invalid(path, absl::StrCat("__metadata__ must be an object of strings, got a JSON ",
                                      value.type_name()));
  }
  for (const auto& [key, v] : value.as_object()) {
    if (!v.is_string()) {
      return Invalid(path, absl::StrCat("__metadata__ value of ", Quoted(key),
                                        " must be a string, got a JSON ", v.type_name(), " (",
                                        Excerpt(v), ")"));
    }
    if (!metadata->emplace(key, v.as_string()).second) {
      return Invalid(path, absl::StrCat("__metadata__ key ", Quoted(key), " appears twice"));
    }
  }
  return absl::OkStatus();
}

// The tensors must cover [0, buffer_bytes) exactly, in some order.
absl::Status CheckTiling(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                         uint64_t buffer_bytes) {
  for (const SafetensorsEntry& e : entries) {
    if (e.data_end > buffer_bytes) {
      return Invalid(path, absl::StrCat("tensor ", Quoted(e.name), ": data_offsets ",
                                        OffsetsText(e), " run past the end of the ", buffer_bytes,
                                        "-byte data buffer (the file is truncated "
                                        "or its header is wrong)"));
    }
  }
  std::vector<const SafetensorsEntry*> order;
  for (const SafetensorsEntry& e : entries) order.push_back(&e);
  std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return std::pair(a->data_begin, a->data_end) < std::pair(b->data_begin, b->data_end);
  });
  uint64_t covered = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry* e : order) {
    if (e->data_begin > covered) {
      return Invalid(path, absl::StrCat("the data buffer has a gap: bytes [", covered, ", ",
                                        e->data_begin, ") belong to no tensor (tensor ",
                                        Quoted(e->name), " starts at ", e->data_begin, ")"));
    }
    if (e->data_begin < covered) {
      return Invalid(path,
                     absl::StrCat("tensors ", Quoted(previous->name), " ", OffsetsText(*previous),
                                  " and ", Quoted(e->name), " ", OffsetsText(*e), " overlap"));
    }
    covered = e->data_end;
    previous = e;
  }
  if (covered != buffer_bytes) {
    return Invalid(path, absl::StrCat("the data buffer has ", buffer_bytes - covered,
                                      " trailing bytes after the last tensor, which ends at byte ",
                                      covered, " of ", buffer_bytes));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view SafetensorsDTypeName(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info.name;
  }
  MOE_CHECK(false) << "no safetensors name for dtype " << DTypeName(dtype);
  return "";
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  absl::StatusOr<RandomAccessFile> opened = RandomAccessFile::Open(path);
  if (!opened.ok()) return opened.status();
  SafetensorsFile file;
  file.path_ = path;
  file.file_ = *std::move(opened);
  const uint64_t file_bytes = file.file_.size();
  if (file_bytes < 8) {
    return Invalid(path, absl::StrCat("it is ", file_bytes,
                                      " bytes long, shorter than the 8-byte header length field"));
  }
  unsigned char length_bytes[8];
  if (absl::Status s = file.file_.ReadAt(0, 8, length_bytes); !s.ok()) return s;
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | length_bytes[i];
  if (header_bytes > kSafetensorsMaxHeaderBytes) {
    return Invalid(path, absl::StrCat("the header length field says ", header_bytes,
                                      " bytes, over the limit of ", kSafetensorsMaxHeaderBytes));
  }
  if (file_bytes - 8 < header_bytes) {
    return Invalid(path,
                   absl::StrCat("it is truncated: the header length field says ", header_bytes,
                                " bytes, but only ", file_bytes - 8, " bytes follow it"));
  }
  std::string header(header_bytes, '\0');
  if (absl::Status s = file.file_.ReadAt(8, header_bytes, header.data()); !s.ok()) return s;
  file.data_start_ = 8 + header_bytes;

  absl::StatusOr<Json> json = ParseJson(header, absl::StrCat(path, " (safetensors header)"),
                                        {.max_depth = 64, .allow_duplicate_keys = true});
  if (!json.ok()) {
    return Invalid(path, absl::StrCat("its header is not valid JSON: ", json.status().message()));
  }
  if (!json->is_object()) {
    return Invalid(
        path, absl::StrCat("its header must be a JSON object, but is a JSON ", json->type_name()));
  }
  bool seen_metadata = false;
  for (const auto& [name, value] : json->as_object()) {
    if (name == "__metadata__") {
      if (seen_metadata) return Invalid(path, "__metadata__ appears twice in the header");
      seen_metadata = true;
      if (absl::Status s = ParseMetadata(path, value, &file.metadata_); !s.ok()) return s;
      continue;
    }
    if (!file.index_.emplace(name, file.entries_.size()).second) {
      return Invalid(path,
                     absl::StrCat("tensor name ", Quoted(name), " appears twice in the header"));
    }
    SafetensorsEntry entry;
    entry.name = name;
    if (absl::Status s = ParseEntry(path, name, value, &entry); !s.ok()) return s;
    file.entries_.push_back(std::move(entry));
    file.names_.push_back(name);
  }
  if (absl::Status s = CheckTiling(path, file.entries_, file_bytes - file.data_start_); !s.ok()) {
    return s;
  }
  return file;
}

const SafetensorsEntry* SafetensorsFile::Find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

absl::StatusOr<const SafetensorsEntry*> SafetensorsFile::FindLoadable(std::string_view name) const {
  const SafetensorsEntry* entry = Find(name);
  if (entry == nullptr) {
    return absl::NotFoundError(absl::StrCat("safetensors file ", path_, " has no tensor named ",
                                            Quoted(name), " (it has ", entries_.size(),
                                            " tensors)"));
  }
  if (!entry->dtype.has_value()) {
    return absl::UnimplementedError(absl::StrCat(
        "tensor ", Quoted(name), " in ", path_, " has dtype ", entry->dtype_name,
        ", which this framework does not load (it loads F32, BF16, F64, I32 and I64); convert "
        "the checkpoint, e.g. to F32 or BF16, before loading it"));
  }
  return entry;
}

absl::Status SafetensorsFile::ReadEntry(const SafetensorsEntry& entry, void* destination) const {
  return file_.ReadAt(data_start_ + entry.data_begin, entry.data_end - entry.data_begin,
                      destination);
}

absl::StatusOr<Tensor> SafetensorsFile::Read(std::string_view name) const {
  absl::StatusOr<const SafetensorsEntry*> entry = FindLoadable(name);
  if (!entry.ok()) return entry.status();
  Tensor t = Tensor::Empty((*entry)->shape, *(*entry)->dtype);
  if (absl::Status s = ReadEntry(**entry, t.raw_data()); !s.ok()) return s;
  return t;
}

absl::Status SafetensorsFile::ReadInto(std::string_view name, Tensor& destination) const {
  absl::StatusOr<const SafetensorsEntry*> entry = FindLoadable(name);
  if (!entry.ok()) return entry.status();
  if (!destination.defined() || destination.shape() != (*entry)->shape ||
      destination.dtype() != *(*entry)->dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", Quoted(name), " in ", path_, " is ", (*entry)->dtype_name, " ",
                     ShapeToString((*entry)->shape), ", but the destination is ",
                     destination.defined() ? destination.Describe() : "undefined",
                     "; the checkpoint does not match the model's configuration"));
  }
  if (destination.device() == Device::kCpu) return ReadEntry(**entry, destination.raw_data());
  absl::StatusOr<Tensor> host = Read(name);
  if (!host.ok()) return host.status();
  destination.CopyFrom(*host);
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  auto refuse = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write safetensors file ", path, ": ", why));
  };
  Json meta = Json::MakeObject();
  if (metadata.empty()) {
    meta.Set("format", "pt");
  } else {
    for (const auto& [key, value] : metadata) {
      if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
        return refuse(absl::StrCat("metadata entry ", Quoted(key), " is not valid UTF-8"));
      }
      meta.Set(key, value);
    }
  }
  Json header = Json::MakeObject({{"__metadata__", std::move(meta)}});
  std::map<std::string_view, int> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") return refuse("\"__metadata__\" is reserved, not a tensor name");
    if (!seen.emplace(name, 0).second) {
      return refuse(absl::StrCat("tensor name ", Quoted(name), " is given twice"));
    }
    if (!t.defined()) return refuse(absl::StrCat("tensor ", Quoted(name), " is undefined"));
    if (!IsValidUtf8(name)) {
      return refuse(absl::StrCat("tensor name ", Quoted(name), " is not valid UTF-8"));
    }
    Json shape = Json::MakeArray();
    for (int64_t d : t.shape()) shape.Append(d);
    Json entry = Json::MakeObject();
    entry.Set("dtype", SafetensorsDTypeName(t.dtype()));
    entry.Set("shape", std::move(shape));
    entry.Set("data_offsets", Json::MakeArray({offset, offset + t.nbytes()}));
    header.Set(name, std::move(entry));
    offset += t.nbytes();
  }
  std::string text = header.Dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  AtomicFileWriter writer;
  if (absl::Status s = writer.Open(path); !s.ok()) return s;
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(text.size() >> (8 * i));
  if (absl::Status s = writer.Write(length, 8); !s.ok()) return s;
  if (absl::Status s = writer.Write(text.data(), text.size()); !s.ok()) return s;
  for (const auto& [name, t] : tensors) {
    const Tensor host = t.device() == Device::kCpu ? t : t.To(Device::kCpu);
    if (absl::Status s = writer.Write(host.raw_data(), host.nbytes()); !s.ok()) return s;
  }
  return writer.Commit();
}

}  // namespace moe
