#include "image/stream.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <google/protobuf/message_lite.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <vector>

#include "image/record_hash.h"
#include "process.pb.h"

namespace stasis::image {
namespace {

// The format is little-endian, and so is every host Stasis runs on (it
// restores x86-64 register sets), so fields are plain copies.
static_assert(std::endian::native == std::endian::little);

template <typename T>
void Store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Payloads are read in growing steps, so a forged length in a short stream
// costs memory in proportion to the bytes actually there, not to the claim.
constexpr size_t kFirstReadStep = 1 << 20;

// "pages", or the number for a type this build does not know.
std::string TypeLabel(uint16_t raw) {
  if (IsKnownRecordType(raw)) return RecordTypeName(static_cast<RecordType>(raw));
  return std::to_string(raw);
}

// Why a page run cannot be, or empty when it can. Shared by the writer
// (kInvalid) and the reader (kCorrupt).
std::string PageRunProblem(uint64_t addr, uint32_t npages) {
  if (npages == 0) return "empty page run";
  if (npages > kMaxPagesPerRecord) {
    return fmt::format("{} pages exceed the {} page limit of one record", npages,
                       kMaxPagesPerRecord);
  }
  if (addr % kPageSize != 0) return fmt::format("address {:#x} is not page-aligned", addr);
  uint64_t bytes = uint64_t{npages} * kPageSize;
  if (addr > std::numeric_limits<uint64_t>::max() - bytes) {
    return fmt::format("run of {} pages at {:#x} overflows the address space", npages, addr);
  }
  return {};
}

// Waits until fd is ready after EAGAIN: borrowed fds may be non-blocking.
Status WaitFor(int fd, short events) {
  struct pollfd pfd = {.fd = fd, .events = events, .revents = 0};
  while (::poll(&pfd, 1, -1) < 0) {
    if (errno != EINTR) return Error::Errno("poll");
  }
  return Ok();
}

// Writes all of iov, advancing it past what went out.
Status WritevFully(int fd, struct iovec* iov, int iovcnt) {
  while (true) {
    while (iovcnt > 0 && iov->iov_len == 0) {
      ++iov;
      --iovcnt;
    }
    if (iovcnt == 0) return Ok();
    ssize_t n = ::writev(fd, iov, std::min(iovcnt, IOV_MAX));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      STASIS_TRY(WaitFor(fd, POLLOUT));
      continue;
    }
    if (n < 0) return Error::Errno("writev");
    if (n == 0) return Error(ErrorCode::kFailed, "writev: wrote nothing");
    for (size_t left = static_cast<size_t>(n); left > 0;) {
      size_t step = std::min(left, iov->iov_len);
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + step;
      iov->iov_len -= step;
      left -= step;
      if (iov->iov_len == 0) {
        ++iov;
        --iovcnt;
      }
    }
  }
}

// After a failed write the stream position is unknown: nothing more may go.
Error EarlierFailure(const char* who) {
  return Error(ErrorCode::kFailed, std::string(who) + ": an earlier write failed");
}

Error OpenError(const std::string& path) {
  int saved = errno;
  ErrorCode code = saved == ENOENT ? ErrorCode::kNotFound : ErrorCode::kFailed;
  return Error(code, path + ": open", saved);
}

}  // namespace

const char* RecordTypeName(RecordType type) {
  switch (type) {
    case RecordType::kManifest:
      return "manifest";
    case RecordType::kFile:
      return "file";
    case RecordType::kProcess:
      return "process";
    case RecordType::kPages:
      return "pages";
    case RecordType::kTrailer:
      return "trailer";
    case RecordType::kLate:
      return "late";
    case RecordType::kKept:
      return "kept";
    case RecordType::kDeferred:
      return "deferred";
  }
  return "unknown";
}

bool IsKnownRecordType(uint16_t raw) {
  return raw >= static_cast<uint16_t>(RecordType::kManifest) &&
         raw <= static_cast<uint16_t>(RecordType::kDeferred);
}

std::string ImagePath(const std::string& dir) {
  if (dir.empty()) return "stasis.img";
  if (dir.back() == '/') return dir + "stasis.img";
  return dir + "/stasis.img";
}

// --- FdSink -------------------------------------------------------------------

Sink::~Sink() = default;

FdSink::FdSink(int fd) : fd_(fd), buffer_(std::make_unique_for_overwrite<uint8_t[]>(kBufferSize)) {}

FdSink::FdSink(sys::UniqueFd owned) : FdSink(owned.get()) { owned_ = std::move(owned); }

Result<std::unique_ptr<FdSink>> FdSink::CreateFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return OpenError(path);
  return std::unique_ptr<FdSink>(new FdSink(sys::UniqueFd(fd)));
}

Status FdSink::Write(const void* data, size_t len) {
  if (failed_) return EarlierFailure("image sink");
  if (len == 0) return Ok();
  if (len >= kDirectWriteMin) {
    struct iovec iov[2] = {{buffer_.get(), used_}, {const_cast<void*>(data), len}};
    used_ = 0;
    return WriteAll(iov, 2);
  }
  if (used_ + len > kBufferSize) STASIS_TRY(Flush());
  std::memcpy(buffer_.get() + used_, data, len);
  used_ += len;
  return Ok();
}

Status FdSink::Flush() {
  if (used_ == 0) return Ok();
  struct iovec iov = {buffer_.get(), used_};
  used_ = 0;
  return WriteAll(&iov, 1);
}

Status FdSink::Sync() {
  STASIS_TRY(Flush());
  while (::fdatasync(fd_) < 0) {
    if (errno != EINTR) return Error::Errno("fdatasync");
  }
  return Ok();
}

Status FdSink::WriteAll(struct iovec* iov, int iovcnt) {
  if (failed_) return EarlierFailure("image sink");
  Status s = WritevFully(fd_, iov, iovcnt);
  if (!s.ok()) failed_ = true;
  return s;
}

// --- FdSource -----------------------------------------------------------------

Source::~Source() = default;

FdSource::FdSource(int fd)
    : fd_(fd), buffer_(std::make_unique_for_overwrite<uint8_t[]>(kBufferSize)) {}

FdSource::FdSource(sys::UniqueFd owned) : FdSource(owned.get()) { owned_ = std::move(owned); }

Result<std::unique_ptr<FdSource>> FdSource::OpenFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return OpenError(path);
  return std::unique_ptr<FdSource>(new FdSource(sys::UniqueFd(fd)));
}

Result<size_t> FdSource::Read(void* buf, size_t len) {
  if (len == 0) return size_t{0};
  if (begin_ == end_) {
    if (len >= kBufferSize / 2) return ReadOnce(buf, len);
    size_t n = STASIS_TRY(ReadOnce(buffer_.get(), kBufferSize));
    begin_ = 0;
    end_ = n;
  }
  size_t n = std::min(len, end_ - begin_);
  std::memcpy(buf, buffer_.get() + begin_, n);
  begin_ += n;
  return n;
}

Result<size_t> FdSource::ReadOnce(void* buf, size_t len) {
  while (true) {
    ssize_t n = ::read(fd_, buf, len);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return Error::Errno("read");
    STASIS_TRY(WaitFor(fd_, POLLIN));
  }
}

// --- MappedFileSource ---------------------------------------------------------

Result<std::unique_ptr<MappedFileSource>> MappedFileSource::Open(const std::string& path) {
  sys::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return OpenError(path);
  return Map(fd.get(), path);
}

Result<std::unique_ptr<MappedFileSource>> MappedFileSource::Map(int fd, const std::string& what) {
  struct stat st;
  if (fstat(fd, &st) < 0) return Error::Errno("fstat " + what);
  if (!S_ISREG(st.st_mode) || st.st_size == 0) {
    return Error::Invalid(what + " is not a regular file with contents");
  }
  size_t size = static_cast<size_t>(st.st_size);
  void* data = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (data == MAP_FAILED) return Error::Errno("mmap " + what);
  madvise(data, size, MADV_SEQUENTIAL);
  return std::unique_ptr<MappedFileSource>(
      new MappedFileSource(static_cast<const uint8_t*>(data), size));
}

MappedFileSource::~MappedFileSource() { munmap(const_cast<uint8_t*>(data_), size_); }

Result<size_t> MappedFileSource::Read(void* buf, size_t len) {
  size_t n = std::min(len, size_ - pos_);
  std::memcpy(buf, data_ + pos_, n);
  pos_ += n;
  return n;
}

const uint8_t* MappedFileSource::Borrow(size_t len) {
  if (len > size_ - pos_) return nullptr;
  const uint8_t* p = data_ + pos_;
  pos_ += len;
  return p;
}

// --- Writer -------------------------------------------------------------------

Writer::Writer(Sink& sink) : sink_(sink) {}

Writer::~Writer() = default;

Status Writer::Put(const void* data, size_t len) {
  Status s = sink_.Write(data, len);
  if (!s.ok()) failed_ = true;
  return s;
}

Status Writer::Begin() {
  if (begun_) return Error::Invalid("image writer: Begin() called twice");
  uint8_t header[kStreamHeaderSize];
  std::memcpy(header, kMagic, sizeof kMagic);
  Store<uint16_t>(header + 8, kFormatMajor);
  Store<uint16_t>(header + 10, kFormatMinor);
  Store<uint32_t>(header + 12, 0);
  Store<uint64_t>(header + 16, XXH3_64bits(header, 16));
  STASIS_TRY(Put(header, sizeof header));
  begun_ = true;
  return Ok();
}

Status Writer::WriteRecord(RecordType type, const void* payload, size_t len) {
  struct iovec iov = {const_cast<void*>(payload), len};
  return WriteRecordV(type, &iov, 1);
}

Status Writer::WriteRecordV(RecordType type, const struct iovec* iov, int iovcnt) {
  if (!begun_) return Error::Invalid("image writer: record before Begin()");
  if (failed_) return EarlierFailure("image writer");
  auto raw_type = static_cast<uint16_t>(type);
  if (!IsKnownRecordType(raw_type)) {
    return Error::Invalid(fmt::format("image writer: unknown record type {}", raw_type));
  }
  size_t len = 0;
  for (int i = 0; i < iovcnt; ++i) {
    // Checked one piece at a time so the sum cannot wrap.
    if (iov[i].iov_len > kMaxRecordPayload - len) {
      return Error::Invalid(fmt::format("{} record exceeds the {} byte payload cap",
                                        RecordTypeName(type), kMaxRecordPayload));
    }
    len += iov[i].iov_len;
  }
  uint8_t frame[kFrameHeaderSize];
  Store<uint16_t>(frame, raw_type);
  Store<uint16_t>(frame + 2, 0);
  Store<uint32_t>(frame + 4, static_cast<uint32_t>(len));
  std::array<struct iovec, 8> small;
  std::vector<struct iovec> big;
  struct iovec* pieces = small.data();
  if (iovcnt + 1 > static_cast<int>(small.size())) {
    big.resize(iovcnt + 1);
    pieces = big.data();
  }
  pieces[0] = {frame, 8};
  std::copy(iov, iov + iovcnt, pieces + 1);
  Store<uint64_t>(frame + 8, RecordHash(pieces, iovcnt + 1));

  STASIS_TRY(Put(frame, sizeof frame));
  for (int i = 0; i < iovcnt; ++i) STASIS_TRY(Put(iov[i].iov_base, iov[i].iov_len));
  ++records_;
  payload_bytes_ += len;
  return Ok();
}

Status Writer::WriteMessage(RecordType type, const google::protobuf::MessageLite& msg) {
  size_t size = msg.ByteSizeLong();
  if (size > kMaxRecordPayload) {
    return Error::Invalid(fmt::format("{} message of {} bytes exceeds the {} byte payload cap",
                                      msg.GetTypeName(), size, kMaxRecordPayload));
  }
  scratch_.resize(size);
  msg.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(scratch_.data()));
  return WriteRecord(type, scratch_.data(), size);
}

Status Writer::WritePages(uint32_t pid, uint64_t addr, const void* data, uint32_t npages) {
  if (std::string why = PageRunProblem(addr, npages); !why.empty()) {
    return Error::Invalid(fmt::format("pid {}: cannot write page run: {}", pid, why));
  }
  uint8_t header[kPageRunHeaderSize];
  Store<uint64_t>(header, addr);
  Store<uint32_t>(header + 8, pid);
  Store<uint32_t>(header + 12, npages);
  struct iovec iov[2] = {{header, sizeof header},
                         {const_cast<void*>(data), size_t{npages} * kPageSize}};
  STASIS_TRY(WriteRecordV(RecordType::kPages, iov, 2));
  pages_ += npages;
  return Ok();
}

Status Writer::WriteTrailer() {
  Trailer trailer;
  trailer.set_records(records_);
  trailer.set_page_bytes(page_bytes());
  trailer.set_pages(pages_);
  STASIS_TRY(WriteMessage(RecordType::kTrailer, trailer));
  return Flush();
}

Status Writer::Flush() {
  if (failed_) return EarlierFailure("image writer");
  return sink_.Flush();
}

// --- Reader -------------------------------------------------------------------

Reader::Reader(Source& source) : source_(source) {}

Reader::~Reader() = default;

Result<size_t> Reader::ReadFull(void* buf, size_t len) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t got = 0;
  while (got < len) {
    size_t n = STASIS_TRY_CTX(source_.Read(p + got, len - got),
                              fmt::format("reading image at offset {}", offset_ + got));
    if (n == 0) break;
    if (n > len - got) return Error(ErrorCode::kFailed, "image source returned too many bytes");
    got += n;
  }
  offset_ += got;
  return got;
}

Status Reader::Begin() {
  if (begun_) return Error::Invalid("image reader: Begin() called twice");
  begun_ = true;
  Status s = BeginImpl();
  if (!s.ok()) failed_ = true;
  return s;
}

Status Reader::BeginImpl() {
  uint8_t h[kStreamHeaderSize];
  size_t got = STASIS_TRY(ReadFull(h, sizeof h));
  if (std::memcmp(h, kMagic, std::min(got, sizeof kMagic)) != 0) {
    return Error::Invalid("not a Stasis image (bad magic)");
  }
  if (got < sizeof h) {
    return Error::Corrupt(fmt::format(
        "image truncated at offset {} (stream header, wanted {} bytes)", got, sizeof h));
  }
  uint64_t stored = Load<uint64_t>(h + 16);
  uint64_t computed = XXH3_64bits(h, 16);
  if (stored != computed) {
    return Error::Corrupt(fmt::format(
        "stream header checksum mismatch (stored {:#018x}, computed {:#018x})", stored, computed));
  }
  uint16_t major = Load<uint16_t>(h + 8);
  uint16_t minor = Load<uint16_t>(h + 10);
  if (major != kFormatMajor) {
    return Error::Invalid(fmt::format("image format {}.{} is not supported: this build reads {}.x",
                                      major, minor, kFormatMajor));
  }
  if (minor > kFormatMinor) {
    return Error::Invalid(
        fmt::format("image format {}.{} is newer than this build reads ({}.{}); use a newer stasis",
                    major, minor, kFormatMajor, kFormatMinor));
  }
  if (uint32_t reserved = Load<uint32_t>(h + 12); reserved != 0) {
    return Error::Corrupt(fmt::format("stream header reserved field is {:#x}, not 0", reserved));
  }
  minor_ = minor;
  return Ok();
}

Result<bool> Reader::Next(Record* out) {
  if (!begun_) return Error::Invalid("image reader: Next() before Begin()");
  if (failed_) return Error(ErrorCode::kFailed, "image reader: an earlier read failed");
  Result<bool> r = NextImpl(out);
  if (!r.ok()) failed_ = true;
  return r;
}

Result<bool> Reader::NextImpl(Record* out) {
  Record rec{};
  rec.index = records_;
  rec.offset = offset_;
  uint8_t frame[kFrameHeaderSize];
  size_t got = STASIS_TRY(ReadFull(frame, sizeof frame));
  if (got == 0) return false;
  if (got < sizeof frame) {
    return Error::Corrupt(fmt::format(
        "image truncated at offset {} (record {} frame header at offset {}, wanted {} bytes, "
        "got {})",
        offset_, rec.index, rec.offset, sizeof frame, got));
  }
  uint16_t raw_type = Load<uint16_t>(frame);
  rec.type = static_cast<RecordType>(raw_type);
  rec.flags = Load<uint16_t>(frame + 2);
  uint32_t len = Load<uint32_t>(frame + 4);
  if (len > kMaxRecordPayload) {
    return Error::Corrupt(
        fmt::format("record {} (type {}) at offset {}: payload length {} exceeds the {} byte cap",
                    rec.index, TypeLabel(raw_type), rec.offset, len, kMaxRecordPayload));
  }
  const uint8_t* payload = source_.Borrow(len);
  if (payload != nullptr) {
    offset_ += len;
  } else {
    STASIS_TRY(ReadPayload(rec, len));
    payload = buffer_.get();
  }
  STASIS_TRY(CheckFrame(rec, frame, payload, len));
  rec.payload = std::span<const uint8_t>(payload, len);
  ++records_;
  *out = rec;
  return true;
}

Status Reader::ReadPayload(const Record& rec, size_t len) {
  size_t got = 0;
  while (got < len) {
    size_t step_end = std::min(len, std::max({kFirstReadStep, got * 2, capacity_}));
    Grow(step_end, got);
    size_t n = STASIS_TRY(ReadFull(buffer_.get() + got, step_end - got));
    got += n;
    if (got < step_end) {
      auto raw_type = static_cast<uint16_t>(rec.type);
      return Error::Corrupt(fmt::format(
          "image truncated at offset {} (record {} of type {} at offset {}, wanted {} bytes of "
          "payload, got {})",
          offset_, rec.index, TypeLabel(raw_type), rec.offset, len, got));
    }
  }
  return Ok();
}

void Reader::Grow(size_t size, size_t keep) {
  if (capacity_ >= size) return;
  size_t new_capacity = std::max(size, std::min(capacity_ * 2, kMaxRecordPayload));
  auto bigger = std::make_unique_for_overwrite<uint8_t[]>(new_capacity);
  if (keep > 0) std::memcpy(bigger.get(), buffer_.get(), keep);
  buffer_ = std::move(bigger);
  capacity_ = new_capacity;
}

// The checksum is checked before the type and flags, so a flipped bit in
// the frame header reads as damage rather than as a format the reader lacks.
Status Reader::CheckFrame(const Record& rec, const uint8_t* frame, const uint8_t* payload,
                          size_t len) {
  auto raw_type = static_cast<uint16_t>(rec.type);
  uint64_t stored = Load<uint64_t>(frame + 8);
  struct iovec pieces[2] = {{const_cast<uint8_t*>(frame), 8}, {const_cast<uint8_t*>(payload), len}};
  uint64_t computed = RecordHash(pieces, 2);
  if (stored != computed) {
    return Error::Corrupt(fmt::format(
        "checksum mismatch in record {} (type {}) at offset {} (stored {:#018x}, computed "
        "{:#018x})",
        rec.index, TypeLabel(raw_type), rec.offset, stored, computed));
  }
  if (!IsKnownRecordType(raw_type)) {
    return Error::Corrupt(fmt::format("unknown record type {} at offset {} (record {})", raw_type,
                                      rec.offset, rec.index));
  }
  if (rec.flags != 0) {
    return Error::Corrupt(
        fmt::format("record {} (type {}) at offset {} has unsupported flags {:#x}", rec.index,
                    TypeLabel(raw_type), rec.offset, rec.flags));
  }
  return Ok();
}

// --- payload helpers ----------------------------------------------------------

Result<PageRun> ParsePageRun(const Record& record) {
  if (record.type != RecordType::kPages) {
    return Error::Invalid(fmt::format("record {} at offset {} is a {} record, not pages",
                                      record.index, record.offset, RecordTypeName(record.type)));
  }
  std::span<const uint8_t> p = record.payload;
  if (p.size() < kPageRunHeaderSize) {
    return Error::Corrupt(fmt::format(
        "page record {} at offset {}: payload of {} bytes is shorter than its {}-byte header",
        record.index, record.offset, p.size(), kPageRunHeaderSize));
  }
  PageRun run;
  run.addr = Load<uint64_t>(p.data());
  run.pid = Load<uint32_t>(p.data() + 8);
  run.npages = Load<uint32_t>(p.data() + 12);
  run.data = p.data() + kPageRunHeaderSize;
  uint64_t want = kPageRunHeaderSize + uint64_t{run.npages} * kPageSize;
  if (p.size() != want) {
    return Error::Corrupt(
        fmt::format("page record {} at offset {}: payload is {} bytes, but {} pages need {}",
                    record.index, record.offset, p.size(), run.npages, want));
  }
  if (std::string why = PageRunProblem(run.addr, run.npages); !why.empty()) {
    return Error::Corrupt(
        fmt::format("page record {} at offset {}: {}", record.index, record.offset, why));
  }
  return run;
}

Status ParseMessage(const Record& record, google::protobuf::MessageLite* msg) {
  if (!msg->ParseFromArray(record.payload.data(), static_cast<int>(record.payload.size()))) {
    return Error::Corrupt(fmt::format("record {} ({}) at offset {}: payload does not parse as {}",
                                      record.index, RecordTypeName(record.type), record.offset,
                                      msg->GetTypeName()));
  }
  return Ok();
}

}  // namespace stasis::image
