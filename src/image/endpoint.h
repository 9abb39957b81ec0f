// Where an image goes and where it comes from: a directory or a stream.
//
// A dump writes to an ImageSink and ends with Commit() (the image is
// whole: a file is synced and renamed into place, a stream flushed) or
// Abort() (nothing written counts as an image). A restore reads from any
// Source; a stream is first read to its end (SpoolImage), because until
// then the dumped tree may still hold its ports, files and locks on this
// host, and a stream without its trailer must be refused before anything
// is created. The format is docs/image-format.md; the command-line forms
// (`-D DIR`, `-o -`, `-i -`) are in README.md.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "image/stream.h"
#include "sys/result.h"

namespace stasis::image {

class ImageSink : public Sink {
 public:
  // The image is complete: after this returns Ok, a reader gets all of it.
  virtual Status Commit() = 0;
  // The dump failed: what was written must not pass for an image.
  // Idempotent; later writes fail.
  virtual void Abort() = 0;
  // Where the image goes, for messages: the directory, or "stdout".
  virtual std::string Describe() const = 0;
  // Bytes accepted so far (the image's size once committed).
  uint64_t bytes() const { return bytes_; }

 protected:
  uint64_t bytes_ = 0;
};

// DIR/stasis.img, written as DIR/stasis.img.partial and renamed once
// synced, so a crash or a failed dump never leaves a file that looks
// whole. Destroyed without Commit(), it removes the partial file.
class DirectorySink final : public ImageSink {
 public:
  // Creates DIR (and its parents) if needed.
  static Result<std::unique_ptr<DirectorySink>> Create(const std::string& dir);
  ~DirectorySink() override;

  Status Write(const void* data, size_t len) override;
  Status Flush() override;
  Status Commit() override;
  void Abort() override;
  std::string Describe() const override { return dir_; }

  const std::string& partial_path() const { return partial_; }

 private:
  DirectorySink(std::string dir, std::unique_ptr<FdSink> file);

  std::string dir_, final_, partial_;
  std::unique_ptr<FdSink> file_;
  bool done_ = false;  // committed or aborted
};

// A pipe or a socket the caller holds (borrowed). Commit flushes; Abort
// drops what is buffered and writes nothing more, so the reader sees a
// stream that stops before its trailer (or inside a record) and refuses it.
// The fd is not closed: the caller closes it once the dump's outcome is
// final (the reader takes its end of file as "the writer is done").
class StreamSink final : public ImageSink {
 public:
  StreamSink(int fd, std::string name);

  Status Write(const void* data, size_t len) override;
  Status Flush() override;
  Status Commit() override;
  void Abort() override;
  std::string Describe() const override { return name_; }

 private:
  FdSink out_;
  std::string name_;
  bool aborted_ = false;
};

// Reads `in` to its end into an unlinked file created in spool_dir,
// checking every record on the way and that the last one is the trailer,
// and returns that copy mapped. `progress` (may be empty) is told the bytes
// read so far. A stream that ends early is refused (kCorrupt: "the image
// stream is empty", "ended before its trailer", or truncated inside a
// record), and nothing of it is kept.
Result<std::unique_ptr<MappedFileSource>> SpoolImage(
    Source& in, const std::string& spool_dir, const std::function<void(uint64_t)>& progress = {});

}  // namespace stasis::image
