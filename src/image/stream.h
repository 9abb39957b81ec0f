// The image stream: a header, then framed, checksummed records.
//
// One format for files, pipes and sockets, so a dump can go straight to
// `ssh host stasis restore -`. The byte layout, the caps and the error each
// failure mode gives are specified in docs/image-format.md; keep the two in
// step.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "sys/result.h"
#include "sys/unique_fd.h"

namespace google::protobuf {
class MessageLite;
}  // namespace google::protobuf

namespace stasis::image {

// --- byte sinks and sources -------------------------------------------------

class Sink {
 public:
  virtual ~Sink();
  virtual Status Write(const void* data, size_t len) = 0;
  virtual Status Flush() = 0;
};

// Writes to a file descriptor. Small writes are gathered in a 1 MiB buffer;
// large ones go out with one writev of the buffered bytes and the payload,
// so page data is never copied. The destructor does not flush: it could not
// report a failure, and a dump that failed half way must not look longer
// than it got. Call Flush() (and Sync() for files that must survive a crash).
class FdSink : public Sink {
 public:
  static constexpr size_t kBufferSize = 1 << 20;
  static constexpr size_t kDirectWriteMin = 256 << 10;

  explicit FdSink(int fd);  // borrows fd
  static Result<std::unique_ptr<FdSink>> CreateFile(const std::string& path);

  Status Write(const void* data, size_t len) override;
  Status Flush() override;
  // Flush() and then fdatasync(). Fails with EINVAL on pipes and sockets.
  Status Sync();

  int fd() const { return fd_; }

 private:
  explicit FdSink(sys::UniqueFd owned);
  Status WriteAll(struct iovec* iov, int iovcnt);

  sys::UniqueFd owned_;
  int fd_;
  std::unique_ptr<uint8_t[]> buffer_;
  size_t used_ = 0;
  bool failed_ = false;  // the stream position is unknown after a failed write
};

class Source {
 public:
  virtual ~Source();
  // Reads up to len bytes. Returns 0 only at end of stream; may return fewer
  // bytes than asked for at any time.
  virtual Result<size_t> Read(void* buf, size_t len) = 0;
  // The next len bytes in place, consumed, if the source holds them in
  // memory that lives as long as it does; else nullptr, nothing consumed.
  virtual const uint8_t* Borrow(size_t /*len*/) { return nullptr; }
  // True when the whole stream is already at hand (a file, memory), so its
  // writer is done with it; false for a pipe or a socket still being
  // written (endpoint.h's SpoolImage reads those to their end first).
  virtual bool IsWhole() const { return false; }
};

// A regular file mapped whole: page records are read where they lie in the
// page cache instead of being copied out first.
class MappedFileSource : public Source {
 public:
  static Result<std::unique_ptr<MappedFileSource>> Open(const std::string& path);
  // The file open at fd (not kept: the mapping holds the file); `what`
  // names it in errors.
  static Result<std::unique_ptr<MappedFileSource>> Map(int fd, const std::string& what);
  ~MappedFileSource() override;

  Result<size_t> Read(void* buf, size_t len) override;
  const uint8_t* Borrow(size_t len) override;
  bool IsWhole() const override { return true; }

 private:
  MappedFileSource(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Reads from a file descriptor through a small buffer, so the 16-byte frame
// headers do not cost one system call each; large reads bypass the buffer.
class FdSource : public Source {
 public:
  static constexpr size_t kBufferSize = 128 << 10;

  explicit FdSource(int fd);  // borrows fd
  static Result<std::unique_ptr<FdSource>> OpenFile(const std::string& path);

  Result<size_t> Read(void* buf, size_t len) override;

  int fd() const { return fd_; }

 private:
  explicit FdSource(sys::UniqueFd owned);
  Result<size_t> ReadOnce(void* buf, size_t len);

  sys::UniqueFd owned_;
  int fd_;
  std::unique_ptr<uint8_t[]> buffer_;
  size_t begin_ = 0;
  size_t end_ = 0;
};

// Collects a stream in memory: for tests, and for images small enough to
// build whole before sending.
class StringSink : public Sink {
 public:
  Status Write(const void* data, size_t len) override {
    if (len > 0) data_.append(static_cast<const char*>(data), len);
    return Ok();
  }
  Status Flush() override { return Ok(); }

  const std::string& data() const { return data_; }

 private:
  std::string data_;
};

// Reads a stream held in memory, which must outlive it. max_read caps each
// Read() so tests can exercise the short reads pipes give.
class MemorySource : public Source {
 public:
  explicit MemorySource(std::string_view data, size_t max_read = SIZE_MAX)
      : data_(data), max_read_(max_read) {}

  Result<size_t> Read(void* buf, size_t len) override {
    size_t n = std::min({len, max_read_, data_.size()});
    if (n > 0) std::memcpy(buf, data_.data(), n);
    data_.remove_prefix(n);
    return n;
  }
  bool IsWhole() const override { return true; }

 private:
  std::string_view data_;
  size_t max_read_;
};

// --- the format ---------------------------------------------------------------

inline constexpr char kMagic[8] = {'S', 'T', 'A', 'S', 'I', 'S', 'I', 'M'};
inline constexpr uint16_t kFormatMajor = 1;
inline constexpr uint16_t kFormatMinor = 2;  // 1.1: late records; 1.2: kept, deferred
inline constexpr size_t kStreamHeaderSize = 24;
inline constexpr size_t kFrameHeaderSize = 16;
inline constexpr size_t kMaxRecordPayload = 64u << 20;
inline constexpr size_t kPageSize = 4096;

// Open: later minors add types. A reader rejects a type it does not know.
enum class RecordType : uint16_t {
  kManifest = 1,
  kFile = 2,
  kProcess = 3,
  kPages = 4,
  kTrailer = 5,
  kLate = 6,  // 1.1: protobuf LateRecord, after the pages, before the trailer
  // 1.2, only in a migration stream: protobuf PageRanges, after a process's
  // page records. Kept: the reader holds these pages from the pre-copy.
  kKept = 7,
  // Deferred: these pages come after the image (post-copy).
  kDeferred = 8,
};

// Frame flag bits. None is in use yet; a reader rejects any set bit.
inline constexpr uint16_t kFlagZstd = 1 << 0;  // reserved: payload zstd-compressed

// Leads every kPages payload, little-endian, followed by npages*kPageSize bytes.
struct PageRunHeader {
  uint64_t addr;
  uint32_t pid;
  uint32_t npages;
};
static_assert(sizeof(PageRunHeader) == 16);

inline constexpr size_t kPageRunHeaderSize = sizeof(PageRunHeader);
// A page record whose pid has this bit set carries the contents of the
// shared-memory object File (pid & ~kShmemPageOwner); addr is the offset.
inline constexpr uint32_t kShmemPageOwner = 0x80000000u;
inline constexpr uint32_t kMaxPagesPerRecord = (kMaxRecordPayload - kPageRunHeaderSize) / kPageSize;

// "manifest", "file", ...; "unknown" for a type this build does not know.
const char* RecordTypeName(RecordType type);
bool IsKnownRecordType(uint16_t raw);

// An image on disk is a directory holding this one file.
std::string ImagePath(const std::string& dir);

// --- writing ------------------------------------------------------------------

class Writer {
 public:
  explicit Writer(Sink& sink);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  Status Begin();  // writes the stream header; call once, first
  Status WriteRecord(RecordType type, const void* payload, size_t len);
  // The payload is the concatenation of iov; nothing is copied.
  Status WriteRecordV(RecordType type, const struct iovec* iov, int iovcnt);
  Status WriteMessage(RecordType type, const google::protobuf::MessageLite& msg);
  // npages in 1..kMaxPagesPerRecord and addr page-aligned; callers split
  // longer runs.
  Status WritePages(uint32_t pid, uint64_t addr, const void* data, uint32_t npages);
  // Writes the Trailer record from the counts below, then flushes.
  Status WriteTrailer();
  Status Flush();

  uint64_t records() const { return records_; }
  uint64_t payload_bytes() const { return payload_bytes_; }
  uint64_t pages() const { return pages_; }
  uint64_t page_bytes() const { return pages_ * kPageSize; }

 private:
  Status Put(const void* data, size_t len);

  Sink& sink_;
  std::string scratch_;  // serialised messages, reused
  bool begun_ = false;
  bool failed_ = false;  // a partial record may be in the sink
  uint64_t records_ = 0;
  uint64_t payload_bytes_ = 0;
  uint64_t pages_ = 0;
};

// --- reading ------------------------------------------------------------------

struct Record {
  RecordType type;
  uint16_t flags;
  uint64_t index;                    // 0-based position among records; error messages use it
  uint64_t offset;                   // stream offset of the frame header
  std::span<const uint8_t> payload;  // valid until the next Reader::Next()
};

class Reader {
 public:
  explicit Reader(Source& source);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  Status Begin();  // reads and checks the stream header
  // False at a clean end of stream, which must fall on a record boundary.
  Result<bool> Next(Record* out);

  uint64_t offset() const { return offset_; }  // bytes consumed so far
  uint16_t format_minor() const { return minor_; }

 private:
  Status BeginImpl();
  Result<bool> NextImpl(Record* out);
  // Returns fewer than len bytes only at end of stream.
  Result<size_t> ReadFull(void* buf, size_t len);
  Status ReadPayload(const Record& rec, size_t len);
  void Grow(size_t size, size_t keep);
  Status CheckFrame(const Record& rec, const uint8_t* frame, const uint8_t* payload, size_t len);

  Source& source_;
  std::unique_ptr<uint8_t[]> buffer_;
  size_t capacity_ = 0;
  uint64_t offset_ = 0;
  uint64_t records_ = 0;
  uint16_t minor_ = 0;
  bool begun_ = false;
  bool failed_ = false;  // the position in the stream is lost after an error
};

// --- payload helpers ----------------------------------------------------------

struct PageRun {
  uint32_t pid;
  uint64_t addr;
  uint32_t npages;
  const uint8_t* data;  // npages*kPageSize bytes inside the record's payload
};

Result<PageRun> ParsePageRun(const Record& record);
Status ParseMessage(const Record& record, google::protobuf::MessageLite* msg);

}  // namespace stasis::image
