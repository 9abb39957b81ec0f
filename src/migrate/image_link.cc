#include "migrate/image_link.h"

#include <cstring>

namespace stasis::migrate {

namespace {
// Frames of this size keep the per-frame cost negligible and a frame's
// checksum verified before much of it is used.
constexpr size_t kChunk = 1 << 20;
}  // namespace

Status ImageFramesSink::SendBuffered() {
  if (buffer_.empty()) return Ok();
  STASIS_TRY(out_.Send(Msg::kImage, buffer_.data(), buffer_.size()));
  buffer_.clear();
  return Ok();
}

Status ImageFramesSink::Write(const void* data, size_t len) {
  if (aborted_) return Error::Invalid("the migration image was aborted");
  const auto* p = static_cast<const uint8_t*>(data);
  bytes_ += len;
  // Large writes (page runs) go out as they are, without a copy.
  if (len >= kChunk) {
    STASIS_TRY(SendBuffered());
    while (len > 0) {
      size_t n = std::min(len, image::kMaxRecordPayload);
      STASIS_TRY(out_.Send(Msg::kImage, p, n));
      p += n;
      len -= n;
    }
    return Ok();
  }
  buffer_.append(reinterpret_cast<const char*>(p), len);
  if (buffer_.size() >= kChunk) STASIS_TRY(SendBuffered());
  return Ok();
}

Status ImageFramesSink::Flush() {
  if (aborted_) return Error::Invalid("the migration image was aborted");
  STASIS_TRY(SendBuffered());
  return out_.Flush();
}

Status ImageFramesSink::Commit() {
  STASIS_TRY(Flush());
  STASIS_TRY(out_.Send(Msg::kImageEnd));
  STASIS_TRY(out_.Flush());
  return commit_();
}

Result<size_t> ImageFramesSource::Read(void* buf, size_t len) {
  while (offset_ == chunk_.size()) {
    if (ended_) return size_t{0};
    Frame f = STASIS_TRY_CTX(in_.Next(), "read the migration image");
    if (f.type == Msg::kImageEnd) {
      ended_ = true;
      return size_t{0};
    }
    if (f.type == Msg::kRefuse) return Refused(in_.peer(), f);
    if (f.type != Msg::kImage) {
      return Error::Corrupt(
          fmt::format("{} sent a {} frame inside the image", in_.peer(), MsgName(f.type)));
    }
    chunk_ = std::move(f.payload);
    offset_ = 0;
  }
  size_t n = std::min(len, chunk_.size() - offset_);
  memcpy(buf, chunk_.data() + offset_, n);
  offset_ += n;
  bytes_ += n;
  return n;
}

}  // namespace stasis::migrate
