#include "image/inspect.h"

#include <google/protobuf/any.pb.h>
#include <gtest/gtest.h>

#include <string>

#include "image/stream.h"
#include "pages.pb.h"
#include "process.pb.h"

namespace stasis::image {
namespace {

std::string Pages(uint32_t npages, char fill) { return std::string(npages * kPageSize, fill); }

// One record of each type, the way a dump orders them.
std::string SampleImage() {
  StringSink sink;
  Writer w(sink);
  EXPECT_TRUE(w.Begin().ok());
  Manifest manifest;
  manifest.set_format_major(1);
  manifest.set_hostname("box");
  manifest.set_root_pid(77);
  manifest.set_vdso_sha("\x01\x02");
  EXPECT_TRUE(w.WriteMessage(RecordType::kManifest, manifest).ok());

  File resolvable;  // state's type is linked in: it prints as JSON
  resolvable.set_id(1);
  resolvable.set_kind("regular");
  Trailer inner;
  inner.set_pages(5);
  resolvable.mutable_state()->PackFrom(inner);
  EXPECT_TRUE(w.WriteMessage(RecordType::kFile, resolvable).ok());

  File unresolvable;  // a kind this binary does not know
  unresolvable.set_id(2);
  unresolvable.set_kind("martian");
  unresolvable.mutable_state()->set_type_url("type.googleapis.com/stasis.kinds.Martian");
  unresolvable.mutable_state()->set_value("\x08\x01");
  EXPECT_TRUE(w.WriteMessage(RecordType::kFile, unresolvable).ok());

  Process process;
  process.set_pid(77);
  process.set_cwd("/tmp");
  Vma* vma = process.add_vmas();
  vma->set_start(0x400000);
  vma->set_end(0x401000);
  vma->set_kind(Vma::FILE);
  vma->add_vm_flags("rd");
  EXPECT_TRUE(w.WriteMessage(RecordType::kProcess, process).ok());

  EXPECT_TRUE(w.WritePages(77, 0x400000, Pages(1, 'a').data(), 1).ok());
  EXPECT_TRUE(w.WritePages(77, 0x7ffd0000, Pages(3, 'b').data(), 3).ok());
  EXPECT_TRUE(w.WriteTrailer().ok());
  return sink.data();
}

TEST(InspectTest, DescribesEveryRecord) {
  std::string image = SampleImage();
  MemorySource source(image);
  Result<nlohmann::json> got = InspectImage(source, /*with_pages_summary=*/true);
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  const nlohmann::json& j = got.value();
  EXPECT_EQ(j["format"], (nlohmann::json{{"major", 1}, {"minor", kFormatMinor}}));
  const nlohmann::json& records = j["records"];
  ASSERT_EQ(records.size(), 7u);

  EXPECT_EQ(records[0]["type"], "manifest");
  EXPECT_EQ(records[0]["offset"], 24);
  EXPECT_EQ(records[0]["message"]["hostname"], "box");
  EXPECT_EQ(records[0]["message"]["root_pid"], 77);           // proto field names kept
  EXPECT_FALSE(records[0]["message"].contains("xfeatures"));  // defaults omitted

  EXPECT_EQ(records[1]["message"]["state"]["@type"], "type.googleapis.com/stasis.image.Trailer");
  EXPECT_EQ(records[1]["message"]["state"]["pages"], "5");  // uint64 is a string in proto JSON

  const nlohmann::json& martian = records[2]["message"];
  EXPECT_EQ(martian["kind"], "martian");
  EXPECT_EQ(martian["state"]["@type"], "type.googleapis.com/stasis.kinds.Martian");
  EXPECT_EQ(martian["state"]["bytes"], 2);
  EXPECT_NE(martian["state"]["error"].get<std::string>().find("stasis.kinds.Martian"),
            std::string::npos)
      << martian.dump();

  EXPECT_EQ(records[3]["message"]["vmas"][0]["kind"], "FILE");
  EXPECT_EQ(records[4], (nlohmann::json{{"type", "pages"},
                                        {"offset", records[4]["offset"]},
                                        {"pid", 77},
                                        {"addr", "0x400000"},
                                        {"npages", 1}}));
  EXPECT_EQ(records[5]["addr"], "0x7ffd0000");
  EXPECT_EQ(records[6]["type"], "trailer");
  EXPECT_EQ(records[6]["message"]["records"], "6");
  EXPECT_EQ(j["pages"], (nlohmann::json{{"records", 2}, {"pages", 4}, {"bytes", 4 * kPageSize}}));
}

TEST(InspectTest, PageRecordsOnlyWithSummary) {
  std::string image = SampleImage();
  MemorySource source(image);
  Result<nlohmann::json> got = InspectImage(source, /*with_pages_summary=*/false);
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  ASSERT_EQ(got.value()["records"].size(), 5u);
  for (const nlohmann::json& r : got.value()["records"]) EXPECT_NE(r["type"], "pages");
  EXPECT_EQ(got.value()["pages"]["pages"], 4);
}

TEST(InspectTest, ListsKeptAndDeferredRanges) {
  StringSink sink;
  Writer w(sink);
  ASSERT_TRUE(w.Begin().ok());
  PageRanges kept;
  kept.set_pid(77);
  PageRange* r = kept.add_ranges();
  r->set_addr(0x400000);
  r->set_npages(3);
  ASSERT_TRUE(w.WriteMessage(RecordType::kKept, kept).ok());
  kept.mutable_ranges(0)->set_npages(1);
  ASSERT_TRUE(w.WriteMessage(RecordType::kDeferred, kept).ok());
  ASSERT_TRUE(w.Flush().ok());
  MemorySource source(sink.data());
  Result<nlohmann::json> got = InspectImage(source, false);
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  const nlohmann::json& records = got.value()["records"];
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0]["type"], "kept");
  EXPECT_EQ(records[0]["message"]["pid"], 77);
  EXPECT_EQ(records[0]["message"]["ranges"][0]["addr"], std::to_string(0x400000));
  EXPECT_EQ(records[0]["message"]["ranges"][0]["npages"], "3");
  EXPECT_EQ(records[1]["type"], "deferred");
  EXPECT_EQ(records[1]["message"]["ranges"][0]["npages"], "1");
}

TEST(InspectTest, DamageFailsTheWholeCall) {
  std::string image = SampleImage();
  image[image.size() - 3] ^= 0x10;  // inside the trailer
  MemorySource source(image);
  Result<nlohmann::json> got = InspectImage(source, true);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code(), ErrorCode::kCorrupt);
  EXPECT_EQ(got.error().message().rfind("checksum mismatch in record 6 (type trailer)", 0), 0u)
      << got.error().message();
}

TEST(InspectTest, ReencodeGivesIdenticalBytes) {
  std::string image = SampleImage();
  MemorySource source(image, /*max_read=*/4096 + 3);
  StringSink out;
  Status s = ReencodeImage(source, out);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(out.data(), image);
}

TEST(InspectTest, ReencodeRejectsBadMessages) {
  StringSink sink;
  Writer w(sink);
  ASSERT_TRUE(w.Begin().ok());
  ASSERT_TRUE(w.WriteRecord(RecordType::kProcess, "\xff\xff", 2).ok());
  ASSERT_TRUE(w.Flush().ok());
  MemorySource source(sink.data());
  StringSink out;
  Status s = ReencodeImage(source, out);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kCorrupt);
}

}  // namespace
}  // namespace stasis::image
