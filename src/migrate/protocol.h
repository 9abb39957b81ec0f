// The migration protocol's framing: typed, checksummed frames over the
// channel (TLS or, with --insecure, plain TCP). A frame is the image's record
// frame (docs/image-format.md: type, flags, length, XXH3 of the three and the
// payload) with the migration's own types, so a damaged or truncated stream
// is named as such even without TLS. docs/design.md ("Live migration") has
// the phases and who sends what when.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <mutex>
#include <string>

#include "image/stream.h"
#include "migrate.pb.h"
#include "sys/result.h"

namespace stasis::migrate {

// Both ends must speak the same version: there is no negotiation.
inline constexpr uint32_t kProtocolVersion = 1;

enum class Msg : uint16_t {
  kHello = 1,         // source -> destination: Hello
  kAccept = 2,        // destination -> source: Accept
  kRefuse = 3,        // either way: Refuse; the migration stops, the source runs on
  kPages = 4,         // source -> destination: a page run (image::PageRunHeader + pages)
  kRoundEnd = 5,      // source -> destination: RoundEnd
  kImage = 6,         // source -> destination: the next bytes of the switch-over image
  kImageEnd = 7,      // source -> destination: the image is whole
  kReady = 8,         // destination -> source: Ready (tree built, stopped)
  kCommit = 9,        // source -> destination: the switch-over point
  kPageRequest = 10,  // destination -> source: PageRequest (post-copy fault)
  kPagesEnd = 11,     // source -> destination: every deferred page was sent
  kDone = 12,         // destination -> source: Done
  kAlive = 13,        // destination -> source, each second of post-copy: the link works
  kMissing = 14,      // destination -> source: MissingPages, after a resuming Hello
  kLast = kMissing,
};
const char* MsgName(Msg type);

struct Frame {
  Msg type;
  std::string payload;
};

// Thread-safe: post-copy sends page requests from the fault thread while
// another thread sends the rest.
class FrameWriter {
 public:
  explicit FrameWriter(image::Sink& sink) : sink_(sink) {}
  Status Send(Msg type, const void* data, size_t len);
  Status Send(Msg type, const google::protobuf::MessageLite& message);
  Status Send(Msg type) { return Send(type, nullptr, 0); }
  // One page run (pid as the tree sees it), written without a copy.
  Status SendPages(uint32_t pid, uint64_t addr, uint64_t npages, const uint8_t* data);
  Status Flush();
  uint64_t bytes() const;

 private:
  Status SendPieces(Msg type, const struct iovec* pieces, int count);
  image::Sink& sink_;
  mutable std::mutex mu_;
  uint64_t bytes_ = 0;
};

class FrameReader {
 public:
  explicit FrameReader(image::Source& source, std::string peer)
      : source_(source), peer_(std::move(peer)) {}
  // The next frame; the peer closing the connection is kIo "... closed the
  // connection", a damaged frame kCorrupt.
  Result<Frame> Next();
  // The next frame, which must be `type` (a Refuse is returned as the error
  // it carries); `what` names the step in errors.
  Result<Frame> Expect(Msg type, const std::string& what);
  template <typename M>
  Result<M> ExpectMessage(Msg type, const std::string& what) {
    Frame f = STASIS_TRY(Expect(type, what));
    return Parse<M>(f, what);
  }
  template <typename M>
  static Result<M> Parse(const Frame& f, const std::string& what) {
    M m;
    if (!m.ParseFromString(f.payload)) {
      return Error::Corrupt(
          fmt::format("{}: a {} frame that does not parse", what, MsgName(f.type)));
    }
    return m;
  }
  const std::string& peer() const { return peer_; }

 private:
  Status ReadExactly(void* buf, size_t len, bool at_boundary);
  image::Source& source_;
  std::string peer_;
};

// A Refuse frame's reason as an error of the peer's.
Error Refused(const std::string& peer, const Frame& f);

}  // namespace stasis::migrate
