#include "migrate/postcopy_source.h"

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <optional>
#include <thread>

#include "migrate/protocol.h"

namespace stasis::migrate {

namespace {

using Clock = std::chrono::steady_clock;

// What ended one connection: Done, or why not, and whether the
// destination itself said stop (then there is no point reconnecting).
struct Outcome {
  Result<Done> done = Error(ErrorCode::kIo, "");
  bool refused = false;
};

Outcome ReadRequests(FrameReader& in, mem::PageServer& server) {
  for (;;) {
    Result<Frame> f = in.Next();
    if (!f.ok()) return {std::move(f).error().Context("post-copy"), false};
    switch (f->type) {
      case Msg::kDone:
        return {FrameReader::Parse<Done>(*f, "post-copy"), false};
      case Msg::kRefuse:
        return {Refused(in.peer(), *f), true};
      case Msg::kAlive:
        break;
      case Msg::kPageRequest: {
        Result<PageRequest> r = FrameReader::Parse<PageRequest>(*f, "post-copy");
        if (!r.ok()) return {std::move(r).error(), false};
        server.Request(r->pid(), r->addr());
        break;
      }
      default:
        return {Error::Corrupt(fmt::format("{} sent a {} frame during post-copy", in.peer(),
                                           MsgName(f->type))),
                false};
    }
  }
}

// One connection's worth: pages out while requests come in. A failure on
// either side closes the channel, which ends the other.
Outcome ServeOver(Channel& channel, mem::PageServer& server, int alive_timeout_ms,
                  uint64_t* bytes) {
  channel.SetTimeout(alive_timeout_ms);
  FrameWriter out(channel);
  FrameReader in(channel, channel.peer());
  Outcome outcome;
  std::thread reader([&] {
    outcome = ReadRequests(in, server);
    if (!outcome.done.ok()) channel.Close();
  });
  Status sent = [&]() -> Status {
    auto send = [&](uint32_t pid, uint64_t addr, uint64_t n, const uint8_t* data) {
      return out.SendPages(pid, addr, n, data);
    };
    while (STASIS_TRY(server.SendNext(send))) STASIS_TRY(out.Flush());
    STASIS_TRY(out.Send(Msg::kPagesEnd));
    return out.Flush();
  }();
  if (!sent.ok()) channel.Close();
  reader.join();
  *bytes += out.bytes();
  if (!sent.ok() && outcome.done.ok()) outcome.done = std::move(sent).error();
  return outcome;
}

// A new connection that resumes the migration: what the destination
// still lacks goes back into the server.
Result<std::unique_ptr<Channel>> Resume(const PostcopySource& options, mem::PageServer& server,
                                        const std::vector<mem::PageServer::Process>& procs,
                                        bool* refused) {
  std::unique_ptr<Channel> channel =
      STASIS_TRY(Channel::Connect(options.to, options.channel, 2000));
  channel->SetTimeout(options.alive_timeout_ms);
  FrameWriter out(*channel);
  FrameReader in(*channel, channel->peer());
  Hello hello;
  hello.set_version(kProtocolVersion);
  hello.set_migration_id(options.migration_id);
  hello.set_resume(true);
  STASIS_TRY(out.Send(Msg::kHello, hello));
  STASIS_TRY(out.Flush());
  Result<Frame> f = in.Next();
  if (f.ok() && f->type == Msg::kRefuse) {
    *refused = true;
    return Refused(in.peer(), *f);
  }
  Frame frame = STASIS_TRY(std::move(f));
  if (frame.type != Msg::kMissing) {
    return Error::Corrupt(
        fmt::format("{} answered a resume with a {} frame", in.peer(), MsgName(frame.type)));
  }
  MissingPages missing = STASIS_TRY(FrameReader::Parse<MissingPages>(frame, "resume"));
  for (const mem::PageServer::Process& p : procs) server.Restart(p.pid, {});
  for (const MissingPages::Proc& p : missing.procs()) {
    std::vector<mem::Range> ranges;
    for (int i = 0; i < p.starts_size() && i < p.ends_size(); ++i) {
      ranges.push_back({p.starts(i), p.ends(i)});
    }
    server.Restart(p.pid(), std::move(ranges));
  }
  return channel;
}

}  // namespace

Result<Done> ServePostcopy(const sys::Env& env, const PostcopySource& options, Channel& first,
                           std::vector<mem::PageServer::Process> deferred, PostcopyStats* stats) {
  std::vector<mem::PageServer::Process> procs = deferred;
  mem::PageServer server(std::move(deferred));
  std::unique_ptr<Channel> owned;
  Channel* channel = &first;
  for (;;) {
    Outcome o = ServeOver(*channel, server, options.alive_timeout_ms, &stats->bytes);
    if (o.done.ok() || o.refused) return std::move(o.done);
    env.log.Warn(fmt::format(
        "post-copy: the link to {} broke ({}); the tree stays frozen here with its pages, "
        "reconnecting for up to {} s",
        options.to, o.done.error().ToString(), options.recovery_ms / 1000));
    Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(options.recovery_ms);
    Error last = std::move(o.done).error();
    for (;;) {
      if (Clock::now() > deadline) {
        return std::move(last).Context(
            fmt::format("post-copy: the destination did not come back within {} s",
                        options.recovery_ms / 1000));
      }
      bool refused = false;
      Result<std::unique_ptr<Channel>> next = Resume(options, server, procs, &refused);
      if (next.ok()) {
        owned = std::move(next).value();
        channel = owned.get();
        stats->reconnects++;
        env.log.Info(fmt::format("post-copy: resumed with {}", channel->peer()));
        break;
      }
      if (refused) return std::move(next).error();
      // Nobody listens there any more: the receiver that ran the tree is
      // gone, and the tree with it (its init kills it when its pager goes).
      if (next.error().errnum() == ECONNREFUSED) {
        return std::move(next).error().Context(
            "post-copy: the destination's receiver is gone, and the tree with it");
      }
      last = std::move(next).error();
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }
}

}  // namespace stasis::migrate
