#include "image/inspect.h"

#include <fmt/format.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/util/json_util.h>

#include <memory>
#include <string>

#include "late.pb.h"
#include "pages.pb.h"
#include "process.pb.h"

namespace stasis::image {
namespace {

using google::protobuf::Message;

// The message type each record type carries; null for raw payloads.
std::unique_ptr<Message> NewMessageFor(RecordType type) {
  switch (type) {
    case RecordType::kManifest:
      return std::make_unique<Manifest>();
    case RecordType::kFile:
      return std::make_unique<File>();
    case RecordType::kProcess:
      return std::make_unique<Process>();
    case RecordType::kTrailer:
      return std::make_unique<Trailer>();
    case RecordType::kLate:
      return std::make_unique<LateRecord>();
    case RecordType::kKept:
    case RecordType::kDeferred:
      return std::make_unique<PageRanges>();
    case RecordType::kPages:
      break;
  }
  return nullptr;
}

Result<std::unique_ptr<Message>> ParseTyped(const Record& record) {
  std::unique_ptr<Message> msg = NewMessageFor(record.type);
  if (msg == nullptr) {
    return Error::Invalid(fmt::format("record {} ({}) at offset {} carries no message",
                                      record.index, RecordTypeName(record.type), record.offset));
  }
  STASIS_TRY(ParseMessage(record, msg.get()));
  return msg;
}

// Ok with the JSON text, or the converter's complaint.
Result<std::string> ToJsonText(const Message& msg) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = false;
  options.preserve_proto_field_names = true;
  std::string text;
  // The converter also logs what it returns; the caller reports it once.
  google::protobuf::LogSilencer quiet;
  auto status = google::protobuf::util::MessageToJsonString(msg, &text, options);
  if (!status.ok()) return Error::Invalid(status.ToString());
  return text;
}

Result<nlohmann::json> ParseJsonText(const std::string& text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return Error(ErrorCode::kFailed, "protobuf produced invalid JSON");
  return json;
}

// A File's state is an Any of a kind's message, which only resolves when
// that kind's schema is linked into this binary. The rest of the File is
// still worth showing, so an unresolved state is described, not fatal.
Result<nlohmann::json> FileToJson(const File& file, const std::string& error) {
  File bare = file;
  bare.clear_state();
  std::string text = STASIS_TRY(ToJsonText(bare));
  nlohmann::json json = STASIS_TRY(ParseJsonText(text));
  json["state"] = {
      {"@type", file.state().type_url()}, {"error", error}, {"bytes", file.state().value().size()}};
  return json;
}

// The message name an Any's type URL names, if this binary has its schema.
bool AnyTypeIsLinked(const google::protobuf::Any& any) {
  const std::string& url = any.type_url();
  std::string name = url.substr(url.rfind('/') + 1);
  return google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(name) != nullptr;
}

Result<nlohmann::json> MessageToJson(const Record& record, const Message& msg) {
  if (record.type == RecordType::kFile) {
    const auto& file = static_cast<const File&>(msg);
    if (file.has_state() && !AnyTypeIsLinked(file.state())) {
      return FileToJson(file, "type " + file.state().type_url() + " is not linked into this build");
    }
  }
  Result<std::string> text = ToJsonText(msg);
  if (text.ok()) return ParseJsonText(text.value());
  if (record.type == RecordType::kFile) {
    return FileToJson(static_cast<const File&>(msg), text.error().message());
  }
  return std::move(text).error().Context(fmt::format("record {} ({}) at offset {}: to JSON",
                                                     record.index, RecordTypeName(record.type),
                                                     record.offset));
}

Result<nlohmann::json> RecordToJson(const Record& record) {
  nlohmann::json json = {{"type", RecordTypeName(record.type)}, {"offset", record.offset}};
  if (record.type == RecordType::kPages) {
    PageRun run = STASIS_TRY(ParsePageRun(record));
    json["pid"] = run.pid;
    json["addr"] = fmt::format("{:#x}", run.addr);
    json["npages"] = run.npages;
    return json;
  }
  std::unique_ptr<Message> msg = STASIS_TRY(ParseTyped(record));
  json["message"] = STASIS_TRY(MessageToJson(record, *msg));
  return json;
}

}  // namespace

Result<nlohmann::json> InspectImage(Source& source, bool with_pages_summary) {
  Reader reader(source);
  STASIS_TRY(reader.Begin());
  nlohmann::json records = nlohmann::json::array();
  uint64_t page_records = 0;
  uint64_t pages = 0;
  Record record;
  while (true) {
    bool more = STASIS_TRY(reader.Next(&record));
    if (!more) break;
    if (record.type == RecordType::kPages) {
      PageRun run = STASIS_TRY(ParsePageRun(record));
      ++page_records;
      pages += run.npages;
      if (!with_pages_summary) continue;
    }
    records.push_back(STASIS_TRY(RecordToJson(record)));
  }
  return nlohmann::json{
      {"format", {{"major", kFormatMajor}, {"minor", reader.format_minor()}}},
      {"records", std::move(records)},
      {"pages", {{"records", page_records}, {"pages", pages}, {"bytes", pages * kPageSize}}},
  };
}

Status ReencodeImage(Source& in, Sink& out) {
  Reader reader(in);
  STASIS_TRY(reader.Begin());
  Writer writer(out);
  STASIS_TRY(writer.Begin());
  Record record;
  while (true) {
    bool more = STASIS_TRY(reader.Next(&record));
    if (!more) break;
    if (record.type == RecordType::kPages) {
      PageRun run = STASIS_TRY(ParsePageRun(record));
      STASIS_TRY(writer.WritePages(run.pid, run.addr, run.data, run.npages));
      continue;
    }
    std::unique_ptr<Message> msg = STASIS_TRY(ParseTyped(record));
    STASIS_TRY(writer.WriteMessage(record.type, *msg));
  }
  return writer.Flush();
}

}  // namespace stasis::image
