#include "image/stream.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <string>
#include <thread>
#include <vector>

#include "process.pb.h"

namespace stasis::image {
namespace {

testing::AssertionResult HasSubstr(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return testing::AssertionSuccess();
  return testing::AssertionFailure() << "\"" << text << "\" lacks \"" << part << "\"";
}

testing::AssertionResult StartsWith(const std::string& text, const std::string& prefix) {
  if (text.starts_with(prefix)) return testing::AssertionSuccess();
  return testing::AssertionFailure()
         << "\"" << text << "\" does not start with \"" << prefix << "\"";
}

struct Parsed {
  std::vector<Record> records;
  std::list<std::string> payloads;  // the records' spans point here; nodes never move
};

Result<Parsed> ReadAll(const std::string& image) {
  MemorySource source(image);
  Reader r(source);
  STASIS_TRY(r.Begin());
  Parsed out;
  Record rec;
  while (STASIS_TRY(r.Next(&rec))) {
    const std::string& copy = out.payloads.emplace_back(rec.payload.begin(), rec.payload.end());
    rec.payload = {reinterpret_cast<const uint8_t*>(copy.data()), copy.size()};
    out.records.push_back(rec);
  }
  return out;
}

Error BeginError(const std::string& image) {
  MemorySource source(image);
  Reader r(source);
  Status s = r.Begin();
  return s.ok() ? Error(ErrorCode::kFailed, "Begin() succeeded") : s.error();
}

// The first error Next() gives, after a good header.
Error NextError(const std::string& image) {
  Result<Parsed> all = ReadAll(image);
  return all.ok() ? Error(ErrorCode::kFailed, "every record read") : all.error();
}

// Encoded here by hand from docs/image-format.md, not through the Writer,
// so the tests pin the documented layout rather than the code's opinion.
std::string Le(uint64_t v, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
  return out;
}

std::string StreamHeader(uint16_t major = 1, uint16_t minor = kFormatMinor, uint32_t reserved = 0) {
  std::string h = "STASISIM" + Le(major, 2) + Le(minor, 2) + Le(reserved, 4);
  return h + Le(XXH3_64bits(h.data(), h.size()), 8);
}

std::string Frame(uint16_t type, const std::string& payload, uint16_t flags = 0) {
  std::string f = Le(type, 2) + Le(flags, 2) + Le(payload.size(), 4);
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  XXH3_64bits_update(state, f.data(), 8);
  XXH3_64bits_update(state, payload.data(), payload.size());
  uint64_t sum = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return f + Le(sum, 8) + payload;
}

std::string PagesPayload(uint64_t addr, uint32_t pid, uint32_t npages, char fill = 'p') {
  return Le(addr, 8) + Le(pid, 4) + Le(npages, 4) + std::string(npages * kPageSize, fill);
}

std::string Pattern(uint32_t npages, uint32_t seed) {
  std::string data(npages * kPageSize, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131 + seed) >> 3);
  return data;
}

// Manifest, two page runs of pid 7, a trailer: offsets 24, 40+m, ...
std::string SmallImage() {
  StringSink sink;
  Writer w(sink);
  EXPECT_TRUE(w.Begin().ok());
  Manifest m;
  m.set_format_major(1);
  m.set_hostname("box");
  EXPECT_TRUE(w.WriteMessage(RecordType::kManifest, m).ok());
  EXPECT_TRUE(w.WritePages(7, 0x1000, Pattern(1, 1).data(), 1).ok());
  EXPECT_TRUE(w.WritePages(7, 0x7f0000, Pattern(2, 2).data(), 2).ok());
  EXPECT_TRUE(w.WriteTrailer().ok());
  return sink.data();
}

TEST(StreamTest, WriterMatchesDocumentedLayout) {
  StringSink sink;
  Writer w(sink);
  ASSERT_TRUE(w.Begin().ok());
  ASSERT_TRUE(w.WriteRecord(RecordType::kFile, "abc", 3).ok());
  std::string pages = Pattern(1, 9);
  ASSERT_TRUE(w.WritePages(42, 0x400000, pages.data(), 1).ok());
  ASSERT_TRUE(w.Flush().ok());
  std::string want =
      StreamHeader() + Frame(2, "abc") + Frame(4, Le(0x400000, 8) + Le(42, 4) + Le(1, 4) + pages);
  EXPECT_EQ(sink.data(), want);
  EXPECT_EQ(w.records(), 2u);
  EXPECT_EQ(w.payload_bytes(), 3u + 16 + kPageSize);
  EXPECT_EQ(w.pages(), 1u);
}

TEST(StreamTest, RoundTripsRecordsAndPages) {
  StringSink sink;
  Writer w(sink);
  ASSERT_TRUE(w.Begin().ok());
  Manifest manifest;
  manifest.set_format_major(1);
  manifest.set_kernel_release("6.1.0");
  manifest.set_root_pid(4123);
  ASSERT_TRUE(w.WriteMessage(RecordType::kManifest, manifest).ok());
  File file;
  file.set_id(3);
  file.set_kind("pipe");
  ASSERT_TRUE(w.WriteMessage(RecordType::kFile, file).ok());
  Process process;
  process.set_pid(4123);
  process.add_threads()->set_tid(4124);
  ASSERT_TRUE(w.WriteMessage(RecordType::kProcess, process).ok());
  std::string one = Pattern(1, 1), three = Pattern(3, 3);
  ASSERT_TRUE(w.WritePages(4123, 0x1000, one.data(), 1).ok());
  ASSERT_TRUE(w.WritePages(4123, 0x7ffff000, three.data(), 3).ok());
  ASSERT_TRUE(w.WriteRecord(RecordType::kFile, nullptr, 0).ok());
  ASSERT_TRUE(w.WriteTrailer().ok());

  MemorySource source(sink.data(), /*max_read=*/7);  // short reads everywhere
  Reader r(source);
  ASSERT_TRUE(r.Begin().ok());
  Record rec;
  ASSERT_TRUE(r.Next(&rec).value());
  EXPECT_EQ(rec.type, RecordType::kManifest);
  EXPECT_EQ(rec.offset, kStreamHeaderSize);
  EXPECT_EQ(rec.index, 0u);
  Manifest m2;
  ASSERT_TRUE(ParseMessage(rec, &m2).ok());
  EXPECT_EQ(m2.kernel_release(), "6.1.0");
  EXPECT_EQ(m2.root_pid(), 4123);

  ASSERT_TRUE(r.Next(&rec).value());
  File f2;
  ASSERT_TRUE(ParseMessage(rec, &f2).ok());
  EXPECT_EQ(f2.kind(), "pipe");
  ASSERT_TRUE(r.Next(&rec).value());
  Process p2;
  ASSERT_TRUE(ParseMessage(rec, &p2).ok());
  ASSERT_EQ(p2.threads_size(), 1);
  EXPECT_EQ(p2.threads(0).tid(), 4124);

  for (const std::string* data : {&one, &three}) {
    ASSERT_TRUE(r.Next(&rec).value());
    ASSERT_EQ(rec.type, RecordType::kPages);
    Result<PageRun> run = ParsePageRun(rec);
    ASSERT_TRUE(run.ok()) << run.error().ToString();
    EXPECT_EQ(run->pid, 4123u);
    EXPECT_EQ(run->npages * kPageSize, data->size());
    EXPECT_EQ(std::memcmp(run->data, data->data(), data->size()), 0);
  }
  ASSERT_TRUE(r.Next(&rec).value());
  EXPECT_EQ(rec.type, RecordType::kFile);
  EXPECT_TRUE(rec.payload.empty());

  ASSERT_TRUE(r.Next(&rec).value());
  EXPECT_EQ(rec.type, RecordType::kTrailer);
  EXPECT_EQ(rec.index, 6u);
  Trailer t;
  ASSERT_TRUE(ParseMessage(rec, &t).ok());
  EXPECT_EQ(t.records(), 6u);
  EXPECT_EQ(t.pages(), 4u);
  EXPECT_EQ(t.page_bytes(), 4 * kPageSize);

  EXPECT_FALSE(r.Next(&rec).value());
  EXPECT_FALSE(r.Next(&rec).value());  // stays at end
  EXPECT_EQ(r.offset(), sink.data().size());
}

TEST(StreamTest, EmptyStreamHasNoRecords) {
  std::string image = StreamHeader();
  MemorySource source(image);
  Reader r(source);
  ASSERT_TRUE(r.Begin().ok());
  Record rec;
  Result<bool> more = r.Next(&rec);
  ASSERT_TRUE(more.ok());
  EXPECT_FALSE(more.value());
}

TEST(StreamTest, ZeroBytesIsTruncatedHeader) {
  Error e = BeginError("");
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_EQ(e.message(), "image truncated at offset 0 (stream header, wanted 24 bytes)");
}

TEST(StreamTest, RejectsBadMagic) {
  std::string image = StreamHeader();
  image[0] = 'X';
  Error e = BeginError(image);
  EXPECT_EQ(e.code(), ErrorCode::kInvalid);
  EXPECT_TRUE(HasSubstr(e.message(), "not a Stasis image"));
  EXPECT_EQ(BeginError("#!/bin/sh\necho hi\n").code(), ErrorCode::kInvalid);
}

TEST(StreamTest, RejectsNewerMinor) {
  Error e = BeginError(StreamHeader(1, 3));
  EXPECT_EQ(e.code(), ErrorCode::kInvalid);
  EXPECT_EQ(e.message(),
            "image format 1.3 is newer than this build reads (1.2); use a newer stasis");
}

TEST(StreamTest, ReadsEveryOlderMinor) {
  for (uint16_t minor : {0, 1, 2}) {
    std::string h = StreamHeader(1, minor);
    MemorySource src(h);
    Reader r(src);
    ASSERT_TRUE(r.Begin().ok()) << "1." << minor;
    EXPECT_EQ(r.format_minor(), minor);
  }
}

TEST(StreamTest, RejectsOtherMajor) {
  for (uint16_t major : {0, 2, 0xffff}) {
    Error e = BeginError(StreamHeader(major, 0));
    EXPECT_EQ(e.code(), ErrorCode::kInvalid);
    EXPECT_TRUE(HasSubstr(e.message(), "is not supported: this build reads 1.x"));
  }
}

TEST(StreamTest, RejectsBadHeaderChecksum) {
  std::string image = StreamHeader();
  image[20] ^= 0x40;
  Error e = BeginError(image);
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_TRUE(StartsWith(e.message(), "stream header checksum mismatch"));
}

TEST(StreamTest, RejectsNonzeroReserved) {
  EXPECT_EQ(BeginError(StreamHeader(1, 0, 5)).code(), ErrorCode::kCorrupt);
}

TEST(StreamTest, FlippedPageByteNamesRecordAndOffset) {
  std::string image = SmallImage();
  Parsed parsed = ReadAll(image).value();
  const Record& second_run = parsed.records[2];
  size_t victim = second_run.offset + kFrameHeaderSize + kPageRunHeaderSize + 5000;
  image[victim] ^= 0x01;
  Error e = NextError(image);
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_TRUE(StartsWith(e.message(), fmt::format("checksum mismatch in record 2 (type pages) "
                                                  "at offset {} (stored 0x",
                                                  second_run.offset)));
}

TEST(StreamTest, EveryFlippedByteIsCaught) {
  const std::string image = SmallImage();
  for (size_t i = 0; i < image.size(); i += (i < 200 ? 1 : 97)) {
    for (uint8_t bit : {0x01, 0x80}) {
      std::string bad = image;
      bad[i] ^= bit;
      Result<Parsed> all = ReadAll(bad);
      ASSERT_FALSE(all.ok()) << "flip at " << i;
      EXPECT_NE(all.error().code(), ErrorCode::kFailed) << all.error().message();
    }
  }
}

TEST(StreamTest, FlippedLengthFieldIsCorrupt) {
  std::string image = SmallImage();
  size_t len_at = ReadAll(image).value().records[1].offset + 4;
  for (int bit = 0; bit < 32; ++bit) {
    std::string bad = image;
    bad[len_at + bit / 8] ^= static_cast<char>(1 << (bit % 8));
    Error e = NextError(bad);
    EXPECT_EQ(e.code(), ErrorCode::kCorrupt) << bit << ": " << e.message();
  }
}

TEST(StreamTest, TruncatedInStreamHeader) {
  Error e = BeginError(StreamHeader().substr(0, 10));
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_EQ(e.message(), "image truncated at offset 10 (stream header, wanted 24 bytes)");
}

TEST(StreamTest, TruncatedInFrameHeader) {
  std::string image = StreamHeader() + Frame(2, "abc") + Frame(5, "").substr(0, 9);
  Error e = NextError(image);
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_EQ(e.message(),
            "image truncated at offset 52 (record 1 frame header at offset 43, wanted 16 bytes, "
            "got 9)");
}

TEST(StreamTest, TruncatedInPayload) {
  std::string image = StreamHeader() + Frame(4, PagesPayload(0x1000, 1, 2));
  image.resize(image.size() - 100);
  Error e = NextError(image);
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_EQ(e.message(), fmt::format("image truncated at offset {} (record 0 of type pages at "
                                     "offset 24, wanted 8208 bytes of payload, got 8108)",
                                     image.size()));
}

TEST(StreamTest, EveryTruncationIsCaughtOrEndsOnABoundary) {
  const std::string image = SmallImage();
  Parsed parsed = ReadAll(image).value();
  std::vector<size_t> boundaries = {kStreamHeaderSize};
  for (const Record& r : parsed.records)
    boundaries.push_back(r.offset + kFrameHeaderSize + r.payload.size());
  for (size_t len = 0; len < image.size(); len += (len < 100 ? 1 : 61)) {
    Result<Parsed> got = ReadAll(image.substr(0, len));
    bool boundary = std::find(boundaries.begin(), boundaries.end(), len) != boundaries.end();
    if (boundary) {
      EXPECT_TRUE(got.ok()) << len;
    } else {
      ASSERT_FALSE(got.ok()) << len;
      EXPECT_EQ(got.error().code(), ErrorCode::kCorrupt) << got.error().message();
    }
  }
}

TEST(StreamTest, OversizedLengthIsRejectedBeforeAllocating) {
  std::string frame = Frame(4, "");
  frame.replace(4, 4, Le(0xffffffff, 4));
  Error e = NextError(StreamHeader() + frame);
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_EQ(e.message(),
            "record 0 (type pages) at offset 24: payload length 4294967295 exceeds the 67108864 "
            "byte cap");
  // Just under the cap, but the bytes are not there: a truncation, found
  // after reading what exists rather than after allocating 64 MiB.
  frame.replace(4, 4, Le(kMaxRecordPayload, 4));
  e = NextError(StreamHeader() + frame + "tiny");
  EXPECT_TRUE(StartsWith(e.message(), "image truncated at offset 44 (record 0 of type pages"));
}

TEST(StreamTest, RejectsUnknownRecordType) {
  Error e = NextError(StreamHeader() + Frame(99, "future"));
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_EQ(e.message(), "unknown record type 99 at offset 24 (record 0)");
  EXPECT_EQ(NextError(StreamHeader() + Frame(0, "")).code(), ErrorCode::kCorrupt);
}

TEST(StreamTest, RejectsUnknownFlags) {
  Error e = NextError(StreamHeader() + Frame(2, "x", kFlagZstd));
  EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
  EXPECT_TRUE(HasSubstr(e.message(), "unsupported flags 0x1"));
}

TEST(StreamTest, ParsePageRunChecksLengthAndAlignment) {
  auto parse = [](const std::string& payload) -> Result<PageRun> {
    // The run points into the Parsed, so it must live as long as the result.
    static Parsed parsed;
    parsed = ReadAll(StreamHeader() + Frame(4, payload)).value();
    return ParsePageRun(parsed.records.at(0));
  };
  std::string short_run = PagesPayload(0x1000, 1, 2);
  short_run.resize(short_run.size() - kPageSize);
  Result<PageRun> r = parse(short_run);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
  EXPECT_EQ(r.error().message(),
            "page record 0 at offset 24: payload is 4112 bytes, but 2 pages need 8208");

  r = parse(PagesPayload(0x1001, 1, 1));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), "page record 0 at offset 24: address 0x1001 is not page-aligned");
  EXPECT_FALSE(parse(PagesPayload(0xfffffffffffff000, 1, 2)).ok());  // wraps
  EXPECT_FALSE(parse(PagesPayload(0x1000, 1, 0)).ok());              // empty
  EXPECT_FALSE(parse("tiny").ok());
  EXPECT_FALSE(parse(Le(0x1000, 8) + Le(1, 4) + Le(0xffffffff, 4)).ok());

  r = parse(PagesPayload(0x5000, 9, 1, 'z'));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->addr, 0x5000u);
  EXPECT_EQ(r->pid, 9u);
  EXPECT_EQ(r->data[4095], 'z');
}

TEST(StreamTest, ParseMessageRejectsGarbage) {
  Parsed parsed = ReadAll(StreamHeader() + Frame(3, "\xff\xff\xff")).value();
  Process p;
  Status s = ParseMessage(parsed.records[0], &p);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ErrorCode::kCorrupt);
  EXPECT_EQ(s.error().message(),
            "record 0 (process) at offset 24: payload does not parse as stasis.image.Process");
}

TEST(StreamTest, WriterRejectsBadInput) {
  StringSink sink;
  Writer w(sink);
  EXPECT_EQ(w.WriteRecord(RecordType::kFile, "x", 1).error().code(), ErrorCode::kInvalid);
  ASSERT_TRUE(w.Begin().ok());
  // Caught before the (absent) bytes are touched.
  struct iovec huge[2] = {{nullptr, kMaxRecordPayload}, {nullptr, 1}};
  EXPECT_EQ(w.WriteRecordV(RecordType::kFile, huge, 2).error().code(), ErrorCode::kInvalid);
  EXPECT_EQ(w.WritePages(1, 0x1000, nullptr, kMaxPagesPerRecord + 1).error().code(),
            ErrorCode::kInvalid);
  EXPECT_EQ(w.WritePages(1, 0x1234, nullptr, 1).error().code(), ErrorCode::kInvalid);
  EXPECT_EQ(w.WritePages(1, 0x1000, nullptr, 0).error().code(), ErrorCode::kInvalid);
  EXPECT_EQ(w.WriteRecord(static_cast<RecordType>(77), "x", 1).error().code(), ErrorCode::kInvalid);
  EXPECT_EQ(w.records(), 0u);
  EXPECT_EQ(sink.data(), StreamHeader());
}

// Small records, medium ones that overflow FdSink's buffer, and page runs
// big enough to take the writev path.
Status WriteMixed(Sink& sink) {
  Writer w(sink);
  STASIS_TRY(w.Begin());
  for (uint32_t i = 0; i < 40; ++i) {
    std::string small(i * 7, static_cast<char>(i));
    STASIS_TRY(w.WriteRecord(RecordType::kFile, small.data(), small.size()));
    std::string medium = Pattern(50, i);  // 200 KiB: buffered
    STASIS_TRY(w.WriteRecord(RecordType::kProcess, medium.data(), medium.size()));
    std::string big = Pattern(70 + i, i);  // >= 280 KiB: written straight through
    STASIS_TRY(w.WritePages(i, 0x10000000 + i * 0x100000, big.data(), 70 + i));
  }
  return w.WriteTrailer();
}

std::string ReadFd(int fd) {
  FdSource source(fd);
  std::string out;
  char buf[3000];  // odd size: mixes buffered and direct reads
  while (true) {
    Result<size_t> n = source.Read(buf, sizeof buf);
    if (!n.ok() || n.value() == 0) return out;
    out.append(buf, n.value());
  }
}

TEST(StreamTest, FdSinkAndSourceRoundTripThroughAFile) {
  StringSink want;
  ASSERT_TRUE(WriteMixed(want).ok());
  char dir[] = "/tmp/stasis-stream-test-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string path = ImagePath(dir);
  {
    Result<std::unique_ptr<FdSink>> sink = FdSink::CreateFile(path);
    ASSERT_TRUE(sink.ok()) << sink.error().ToString();
    ASSERT_TRUE(WriteMixed(*sink.value()).ok());
    Status synced = sink.value()->Sync();
    ASSERT_TRUE(synced.ok()) << synced.error().ToString();
  }
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(static_cast<size_t>(st.st_size), want.data().size());

  Result<std::unique_ptr<FdSource>> source = FdSource::OpenFile(path);
  ASSERT_TRUE(source.ok());
  EXPECT_TRUE(ReadFd(source.value()->fd()) == want.data());
  ::unlink(path.c_str());
  ::rmdir(dir);

  Result<std::unique_ptr<FdSource>> missing = FdSource::OpenFile(path);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(missing.error().errnum(), ENOENT);
}

// A mapped file lends payloads in place: the reader must see the same
// records as from memory, catch the same damage, and report truncation.
TEST(StreamTest, MappedFileSourceReadsRecordsInPlace) {
  StringSink want;
  ASSERT_TRUE(WriteMixed(want).ok());
  char dir[] = "/tmp/stasis-stream-test-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string path = ImagePath(dir);
  auto read_file = [&](const std::string& bytes) -> Result<std::vector<std::string>> {
    FILE* f = fopen(path.c_str(), "w");
    fwrite(bytes.data(), 1, bytes.size(), f);
    fclose(f);
    auto source = STASIS_TRY(MappedFileSource::Open(path));
    Reader r(*source);
    STASIS_TRY(r.Begin());
    std::vector<std::string> payloads;
    Record rec;
    while (STASIS_TRY(r.Next(&rec))) payloads.emplace_back(rec.payload.begin(), rec.payload.end());
    return payloads;
  };
  Result<Parsed> expected = ReadAll(want.data());
  ASSERT_TRUE(expected.ok());
  Result<std::vector<std::string>> got = read_file(want.data());
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  ASSERT_EQ(got.value().size(), expected.value().payloads.size());
  EXPECT_TRUE(
      std::equal(got.value().begin(), got.value().end(), expected.value().payloads.begin()));

  std::string flipped = want.data();
  flipped[flipped.size() / 2] ^= 0x20;
  Result<std::vector<std::string>> damaged = read_file(flipped);
  ASSERT_FALSE(damaged.ok());
  EXPECT_TRUE(HasSubstr(damaged.error().message(), "checksum mismatch"));

  Result<std::vector<std::string>> truncated =
      read_file(want.data().substr(0, want.data().size() - 5));
  ASSERT_FALSE(truncated.ok());
  EXPECT_TRUE(HasSubstr(truncated.error().message(), "truncated"));
  ::unlink(path.c_str());
  ::rmdir(dir);
}

TEST(StreamTest, FdSinkHandlesShortWritesOnANonBlockingPipe) {
  StringSink want;
  ASSERT_TRUE(WriteMixed(want).ok());
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  ASSERT_EQ(::fcntl(fds[1], F_SETFL, O_NONBLOCK), 0);  // writes go short, then EAGAIN
  std::string got;
  std::thread reader([&] { got = ReadFd(fds[0]); });
  {
    FdSink sink(fds[1]);
    Status s = WriteMixed(sink);
    EXPECT_TRUE(s.ok()) << s.error().ToString();
  }
  ::close(fds[1]);
  reader.join();
  ::close(fds[0]);
  EXPECT_TRUE(got == want.data()) << got.size() << " vs " << want.data().size();
  MemorySource source(got);
  Reader r(source);
  ASSERT_TRUE(r.Begin().ok());
  Record rec;
  uint64_t n = 0;
  while (r.Next(&rec).value()) ++n;
  EXPECT_EQ(n, 121u);
}

TEST(StreamTest, RecordTypeNamesAndImagePath) {
  EXPECT_STREQ(RecordTypeName(RecordType::kManifest), "manifest");
  EXPECT_STREQ(RecordTypeName(RecordType::kTrailer), "trailer");
  EXPECT_STREQ(RecordTypeName(RecordType::kLate), "late");
  EXPECT_STREQ(RecordTypeName(RecordType::kKept), "kept");
  EXPECT_STREQ(RecordTypeName(RecordType::kDeferred), "deferred");
  EXPECT_TRUE(IsKnownRecordType(6));
  EXPECT_TRUE(IsKnownRecordType(8));
  EXPECT_FALSE(IsKnownRecordType(9));
  EXPECT_STREQ(RecordTypeName(static_cast<RecordType>(40)), "unknown");
  EXPECT_EQ(ImagePath("/var/img"), "/var/img/stasis.img");
  EXPECT_EQ(ImagePath("/var/img/"), "/var/img/stasis.img");
}

}  // namespace
}  // namespace stasis::image
