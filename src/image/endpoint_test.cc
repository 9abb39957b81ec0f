#include "image/endpoint.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "process.pb.h"

namespace stasis::image {
namespace {

namespace fs = std::filesystem;

class EndpointTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "stasis-endpoint-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  std::vector<std::string> Entries(const fs::path& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename());
    return out;
  }

  fs::path root_;
};

// A small whole image: header, manifest, one page run, trailer.
Status WriteImage(Sink& sink, bool with_trailer) {
  Writer writer(sink);
  STASIS_TRY(writer.Begin());
  Manifest manifest;
  manifest.set_root_pid(42);
  STASIS_TRY(writer.WriteMessage(RecordType::kManifest, manifest));
  std::string page(kPageSize, 'x');
  STASIS_TRY(writer.WritePages(42, 0x10000, page.data(), 1));
  if (with_trailer) return writer.WriteTrailer();
  return writer.Flush();
}

TEST_F(EndpointTest, DirectoryImageAppearsOnlyOnCommit) {
  std::string dir = root_ / "img" / "nested";
  auto sink = DirectorySink::Create(dir);
  ASSERT_TRUE(sink.ok()) << sink.error().ToString();
  ASSERT_TRUE(WriteImage(**sink, true).ok());
  EXPECT_TRUE(fs::exists((*sink)->partial_path()));
  EXPECT_FALSE(fs::exists(ImagePath(dir)));
  ASSERT_TRUE((*sink)->Commit().ok());
  EXPECT_EQ(Entries(dir), std::vector<std::string>{"stasis.img"});
  EXPECT_EQ(fs::file_size(ImagePath(dir)), (*sink)->bytes());
  sink->reset();  // destruction after Commit keeps the image
  EXPECT_TRUE(fs::exists(ImagePath(dir)));
}

TEST_F(EndpointTest, DirectoryAbortLeavesNoFile) {
  auto sink = DirectorySink::Create(root_);
  ASSERT_TRUE(sink.ok());
  ASSERT_TRUE(WriteImage(**sink, true).ok());
  (*sink)->Abort();
  EXPECT_TRUE(Entries(root_).empty());
  EXPECT_FALSE((*sink)->Commit().ok());
  EXPECT_FALSE((*sink)->Write("x", 1).ok());
  EXPECT_TRUE(Entries(root_).empty());
}

TEST_F(EndpointTest, DirectoryDestroyedWithoutCommitLeavesNoFile) {
  {
    auto sink = DirectorySink::Create(root_);
    ASSERT_TRUE(sink.ok());
    ASSERT_TRUE(WriteImage(**sink, true).ok());
  }
  EXPECT_TRUE(Entries(root_).empty());
}

TEST_F(EndpointTest, DirectoryCommitDoesNotReplaceOnFailure) {
  auto sink = DirectorySink::Create(root_);
  ASSERT_TRUE(sink.ok());
  ASSERT_TRUE(WriteImage(**sink, true).ok());
  fs::remove_all(root_);  // gone from under the sink: the rename cannot succeed
  EXPECT_FALSE((*sink)->Commit().ok());
  fs::create_directories(root_);
}

// The writer runs in a thread: a pipe holds only 64 KiB.
struct Transfer {
  Result<std::unique_ptr<MappedFileSource>> spooled = Error::Invalid("not run");
  std::vector<uint64_t> progress;
};

Transfer SendThrough(int write_fd, int read_fd, const std::string& spool_dir,
                     const std::function<void(StreamSink&)>& write) {
  std::thread writer([&] {
    StreamSink sink(write_fd, "a test stream");
    write(sink);
    close(write_fd);  // the reader's end of file
  });
  Transfer t;
  FdSource source(read_fd);
  t.spooled = SpoolImage(source, spool_dir, [&t](uint64_t n) { t.progress.push_back(n); });
  writer.join();
  close(read_fd);
  return t;
}

Result<std::vector<RecordType>> Types(Source& source) {
  Reader reader(source);
  STASIS_TRY(reader.Begin());
  std::vector<RecordType> out;
  Record rec;
  while (STASIS_TRY(reader.Next(&rec))) out.push_back(rec.type);
  return out;
}

TEST_F(EndpointTest, StreamSinkWritesAReadableStreamThroughAPipe) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  Transfer t = SendThrough(p[1], p[0], root_, [](StreamSink& sink) {
    ASSERT_TRUE(WriteImage(sink, true).ok());
    ASSERT_TRUE(sink.Commit().ok());
  });
  ASSERT_TRUE(t.spooled.ok()) << t.spooled.error().ToString();
  EXPECT_TRUE((*t.spooled)->IsWhole());
  auto types = Types(**t.spooled);
  ASSERT_TRUE(types.ok()) << types.error().ToString();
  EXPECT_EQ(*types, (std::vector<RecordType>{RecordType::kManifest, RecordType::kPages,
                                             RecordType::kTrailer}));
  ASSERT_FALSE(t.progress.empty());
  EXPECT_GT(t.progress.back(), kPageSize);
  EXPECT_TRUE(Entries(root_).empty());  // the spool file is unlinked
}

TEST_F(EndpointTest, StreamSinkWorksOverASocketPair) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Transfer t = SendThrough(sv[0], sv[1], root_, [](StreamSink& sink) {
    ASSERT_TRUE(WriteImage(sink, true).ok());
    ASSERT_TRUE(sink.Commit().ok());
  });
  ASSERT_TRUE(t.spooled.ok()) << t.spooled.error().ToString();
}

TEST_F(EndpointTest, AbortedStreamIsRefused) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  Transfer t = SendThrough(p[1], p[0], root_, [](StreamSink& sink) {
    // The head went out; the dump fails before its trailer.
    ASSERT_TRUE(WriteImage(sink, false).ok());
    sink.Abort();
    EXPECT_FALSE(sink.Write("x", 1).ok());
  });
  ASSERT_FALSE(t.spooled.ok());
  EXPECT_EQ(t.spooled.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(t.spooled.error().ToString().find("ended before its trailer"), std::string::npos)
      << t.spooled.error().ToString();
  EXPECT_TRUE(Entries(root_).empty());
}

TEST_F(EndpointTest, StreamCutInsideARecordIsRefused) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  Transfer t = SendThrough(p[1], p[0], root_, [](StreamSink& sink) {
    StringSink whole;
    ASSERT_TRUE(WriteImage(whole, true).ok());
    ASSERT_TRUE(sink.Write(whole.data().data(), whole.data().size() - 100).ok());
    ASSERT_TRUE(sink.Flush().ok());
    sink.Abort();
  });
  ASSERT_FALSE(t.spooled.ok());
  EXPECT_NE(t.spooled.error().ToString().find("truncated"), std::string::npos)
      << t.spooled.error().ToString();
}

TEST_F(EndpointTest, EmptyStreamIsRefused) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  Transfer t = SendThrough(p[1], p[0], root_, [](StreamSink& sink) { sink.Abort(); });
  ASSERT_FALSE(t.spooled.ok());
  EXPECT_EQ(t.spooled.error().code(), ErrorCode::kCorrupt);
}

}  // namespace
}  // namespace stasis::image
