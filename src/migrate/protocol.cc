#include "migrate/protocol.h"

#include <fmt/format.h>
#include <sys/uio.h>

#include <cstring>

#include "image/record_hash.h"

namespace stasis::migrate {

namespace {

constexpr size_t kHeader = image::kFrameHeaderSize;

void PutHeader(uint8_t* h, Msg type, uint32_t len) {
  uint16_t t = static_cast<uint16_t>(type), flags = 0;
  memcpy(h, &t, 2);
  memcpy(h + 2, &flags, 2);
  memcpy(h + 4, &len, 4);
}

}  // namespace

const char* MsgName(Msg type) {
  switch (type) {
    case Msg::kHello:
      return "hello";
    case Msg::kAccept:
      return "accept";
    case Msg::kRefuse:
      return "refuse";
    case Msg::kPages:
      return "pages";
    case Msg::kRoundEnd:
      return "round-end";
    case Msg::kImage:
      return "image";
    case Msg::kImageEnd:
      return "image-end";
    case Msg::kReady:
      return "ready";
    case Msg::kCommit:
      return "commit";
    case Msg::kPageRequest:
      return "page-request";
    case Msg::kPagesEnd:
      return "pages-end";
    case Msg::kDone:
      return "done";
    case Msg::kAlive:
      return "alive";
    case Msg::kMissing:
      return "missing";
  }
  return "unknown";
}

Status FrameWriter::SendPieces(Msg type, const struct iovec* pieces, int count) {
  size_t len = 0;
  for (int i = 0; i < count; ++i) len += pieces[i].iov_len;
  if (len > image::kMaxRecordPayload) {
    return Error::Invalid(
        fmt::format("a {} frame of {} bytes is over the cap", MsgName(type), len));
  }
  uint8_t header[kHeader];
  PutHeader(header, type, static_cast<uint32_t>(len));
  struct iovec all[4];
  all[0] = {header, 8};
  for (int i = 0; i < count; ++i) all[i + 1] = pieces[i];
  uint64_t sum = image::RecordHash(all, count + 1);
  memcpy(header + 8, &sum, 8);
  std::lock_guard lock(mu_);
  STASIS_TRY(sink_.Write(header, kHeader));
  for (int i = 0; i < count; ++i) {
    if (pieces[i].iov_len > 0) STASIS_TRY(sink_.Write(pieces[i].iov_base, pieces[i].iov_len));
  }
  bytes_ += kHeader + len;
  return Ok();
}

Status FrameWriter::Send(Msg type, const void* data, size_t len) {
  struct iovec piece = {const_cast<void*>(data), len};
  return SendPieces(type, &piece, 1);
}

Status FrameWriter::Send(Msg type, const google::protobuf::MessageLite& message) {
  std::string bytes;
  if (!message.SerializeToString(&bytes)) {
    return Error::Invalid(fmt::format("encode the {} message", MsgName(type)));
  }
  return Send(type, bytes.data(), bytes.size());
}

Status FrameWriter::SendPages(uint32_t pid, uint64_t addr, uint64_t npages, const uint8_t* data) {
  while (npages > 0) {
    uint64_t n = std::min<uint64_t>(npages, image::kMaxPagesPerRecord);
    image::PageRunHeader run = {addr, pid, static_cast<uint32_t>(n)};
    struct iovec pieces[2] = {{&run, sizeof run},
                              {const_cast<uint8_t*>(data), n * image::kPageSize}};
    STASIS_TRY(SendPieces(Msg::kPages, pieces, 2));
    addr += n * image::kPageSize;
    data += n * image::kPageSize;
    npages -= n;
  }
  return Ok();
}

Status FrameWriter::Flush() {
  std::lock_guard lock(mu_);
  return sink_.Flush();
}

uint64_t FrameWriter::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

Status FrameReader::ReadExactly(void* buf, size_t len, bool at_boundary) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t got = 0;
  while (got < len) {
    size_t n = STASIS_TRY(source_.Read(p + got, len - got));
    if (n == 0) {
      if (at_boundary && got == 0) {
        return Error(ErrorCode::kFailed, fmt::format("{} closed the connection", peer_));
      }
      return Error::Corrupt(fmt::format("the stream from {} ends inside a frame", peer_));
    }
    got += n;
  }
  return Ok();
}

Result<Frame> FrameReader::Next() {
  uint8_t header[kHeader];
  STASIS_TRY(ReadExactly(header, kHeader, true));
  uint16_t type, flags;
  uint32_t len;
  uint64_t sum;
  memcpy(&type, header, 2);
  memcpy(&flags, header + 2, 2);
  memcpy(&len, header + 4, 4);
  memcpy(&sum, header + 8, 8);
  if (flags != 0 || len > image::kMaxRecordPayload || type == 0 ||
      type > static_cast<uint16_t>(Msg::kLast)) {
    return Error::Corrupt(fmt::format(
        "a damaged frame from {} (type {}, flags {:#x}, length {}): is it a Stasis migration "
        "of the same version?",
        peer_, type, flags, len));
  }
  Frame f{static_cast<Msg>(type), std::string(len, '\0')};
  STASIS_TRY(ReadExactly(f.payload.data(), len, false));
  struct iovec pieces[2] = {{header, 8}, {f.payload.data(), len}};
  if (image::RecordHash(pieces, 2) != sum) {
    return Error::Corrupt(
        fmt::format("a {} frame from {} fails its checksum", MsgName(f.type), peer_));
  }
  return f;
}

Error Refused(const std::string& peer, const Frame& f) {
  Refuse r;
  r.ParseFromString(f.payload);
  return Error(ErrorCode::kFailed, fmt::format("{} refused: {}", peer, r.reason()));
}

Result<Frame> FrameReader::Expect(Msg type, const std::string& what) {
  Frame f = STASIS_TRY_CTX(Next(), what);
  if (f.type == type) return f;
  if (f.type == Msg::kRefuse) return Refused(peer_, f);
  return Error::Corrupt(fmt::format("{}: {} sent a {} frame where a {} was due", what, peer_,
                                    MsgName(f.type), MsgName(type)));
}

}  // namespace stasis::migrate
