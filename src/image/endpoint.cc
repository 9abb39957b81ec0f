#include "image/endpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <utility>

namespace stasis::image {

// --- DirectorySink --------------------------------------------------------------

Result<std::unique_ptr<DirectorySink>> DirectorySink::Create(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error::FromErrno("create image directory " + dir, ec.value());
  std::unique_ptr<FdSink> file = STASIS_TRY(FdSink::CreateFile(ImagePath(dir) + ".partial"));
  return std::unique_ptr<DirectorySink>(new DirectorySink(dir, std::move(file)));
}

DirectorySink::DirectorySink(std::string dir, std::unique_ptr<FdSink> file)
    : dir_(std::move(dir)),
      final_(ImagePath(dir_)),
      partial_(final_ + ".partial"),
      file_(std::move(file)) {}

DirectorySink::~DirectorySink() { Abort(); }

Status DirectorySink::Write(const void* data, size_t len) {
  if (done_) return Error::Invalid("image " + final_ + ": write after commit or abort");
  STASIS_TRY(file_->Write(data, len));
  bytes_ += len;
  return Ok();
}

Status DirectorySink::Flush() {
  if (done_) return Error::Invalid("image " + final_ + ": flush after commit or abort");
  return file_->Flush();
}

Status DirectorySink::Commit() {
  if (done_) return Error::Invalid("image " + final_ + ": commit after commit or abort");
  STASIS_TRY_CTX(file_->Sync(), "write image " + partial_);
  if (rename(partial_.c_str(), final_.c_str()) < 0) return Error::Errno("rename to " + final_);
  done_ = true;
  file_.reset();
  return Ok();
}

void DirectorySink::Abort() {
  if (done_) return;
  done_ = true;
  file_.reset();
  unlink(partial_.c_str());
}

// --- StreamSink -----------------------------------------------------------------

StreamSink::StreamSink(int fd, std::string name) : out_(fd), name_(std::move(name)) {}

Status StreamSink::Write(const void* data, size_t len) {
  if (aborted_) return Error::Invalid("image stream to " + name_ + ": write after abort");
  STASIS_TRY_CTX(out_.Write(data, len), name_);
  bytes_ += len;
  return Ok();
}

Status StreamSink::Flush() {
  if (aborted_) return Error::Invalid("image stream to " + name_ + ": flush after abort");
  STASIS_TRY_CTX(out_.Flush(), name_);
  return Ok();
}

Status StreamSink::Commit() { return Flush(); }

// What is still buffered is never written (FdSink's destructor does not
// flush), so the reader's stream stops where the last flush left it.
void StreamSink::Abort() { aborted_ = true; }

// --- SpoolImage -----------------------------------------------------------------

namespace {

// Passes what it reads on to a sink as well.
class TeeSource final : public Source {
 public:
  TeeSource(Source& in, Sink& copy, const std::function<void(uint64_t)>& progress)
      : in_(in), copy_(copy), progress_(progress) {}

  Result<size_t> Read(void* buf, size_t len) override {
    size_t n = STASIS_TRY(in_.Read(buf, len));
    STASIS_TRY(copy_.Write(buf, n));
    total_ += n;
    // Every 64 MiB: often enough for a person, rarely enough to cost nothing.
    if (progress_ && total_ - reported_ >= (64u << 20)) {
      reported_ = total_;
      progress_(total_);
    }
    return n;
  }
  uint64_t total() const { return total_; }

 private:
  Source& in_;
  Sink& copy_;
  const std::function<void(uint64_t)>& progress_;
  uint64_t total_ = 0;
  uint64_t reported_ = 0;
};

// A file in dir that no other process can open and that goes with its
// last descriptor, however the restore ends.
Result<sys::UniqueFd> CreateUnlinked(const std::string& dir) {
  std::string path = dir + "/stasis-image-XXXXXX";
  sys::UniqueFd fd(mkostemp(path.data(), O_CLOEXEC));
  if (!fd.valid()) return Error::Errno("create a spool file in " + dir);
  if (unlink(path.c_str()) < 0) return Error::Errno("unlink spool file " + path);
  return fd;
}

// Every record checked, and the last one the trailer.
Status ReadToEnd(Reader& reader) {
  STASIS_TRY(reader.Begin());
  Record rec;
  bool trailer_last = false;
  while (STASIS_TRY(reader.Next(&rec))) trailer_last = rec.type == RecordType::kTrailer;
  if (!trailer_last) {
    return Error::Corrupt(fmt::format(
        "the image stream ended before its trailer, at offset {}: the dump did not complete",
        reader.offset()));
  }
  return Ok();
}

}  // namespace

Result<std::unique_ptr<MappedFileSource>> SpoolImage(
    Source& in, const std::string& spool_dir, const std::function<void(uint64_t)>& progress) {
  sys::UniqueFd fd = STASIS_TRY(CreateUnlinked(spool_dir));
  FdSink copy(fd.get());
  TeeSource tee(in, copy, progress);
  Reader reader(tee);
  Status whole = ReadToEnd(reader);
  if (!whole.ok() && tee.total() == 0) {
    return Error::Corrupt(
        "the image stream is empty: its writer stopped before the first byte (a failed dump?); "
        "nothing was restored from it");
  }
  if (!whole.ok()) {
    return std::move(whole).error().Context("read image stream (nothing was restored from it)");
  }
  STASIS_TRY_CTX(copy.Flush(), "write spool file in " + spool_dir);
  if (progress) progress(tee.total());
  return MappedFileSource::Map(fd.get(), "spooled image stream");
}

}  // namespace stasis::image
