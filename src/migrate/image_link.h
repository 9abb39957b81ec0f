// The switch-over image inside the migration's frames: the source's dump
// writes an ordinary image (docs/image-format.md) whose bytes travel as
// kImage frames ended by kImageEnd, and the destination's restore reads them
// back as a Source that ends there. The connection goes on after the image
// (commit, post-copy pages), which a bare byte stream could not do.
#pragma once

#include <functional>
#include <string>

#include "image/endpoint.h"
#include "migrate/protocol.h"

namespace stasis::migrate {

class ImageFramesSink final : public image::ImageSink {
 public:
  // commit runs in Commit() once the image is sent whole: the switch-over
  // (the tree is still frozen; the dump kills it only if commit succeeds).
  ImageFramesSink(FrameWriter& out, std::string peer, std::function<Status()> commit)
      : out_(out), peer_(std::move(peer)), commit_(std::move(commit)) {}

  Status Write(const void* data, size_t len) override;
  Status Flush() override;
  Status Commit() override;
  void Abort() override { aborted_ = true; }
  std::string Describe() const override { return peer_; }

 private:
  Status SendBuffered();
  FrameWriter& out_;
  std::string peer_;
  std::function<Status()> commit_;
  std::string buffer_;
  bool aborted_ = false;
};

class ImageFramesSource final : public image::Source {
 public:
  // first: the payload of the first kImage frame, already read.
  ImageFramesSource(FrameReader& in, std::string first) : in_(in), chunk_(std::move(first)) {}
  Result<size_t> Read(void* buf, size_t len) override;
  uint64_t bytes() const { return bytes_; }

 private:
  FrameReader& in_;
  std::string chunk_;
  size_t offset_ = 0;
  bool ended_ = false;
  uint64_t bytes_ = 0;
};

}  // namespace stasis::migrate
