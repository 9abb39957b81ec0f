#include "migrate/postcopy_dest.h"

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "migrate.pb.h"
#include "migrate/protocol.h"

namespace stasis::migrate {

namespace {

using Clock = std::chrono::steady_clock;

// The writer of the connection in use, shared by the fault thread (page
// requests), the heartbeat, and the reader's thread (which replaces it).
class CurrentWriter {
 public:
  void Set(FrameWriter* w) {
    std::lock_guard lock(mu_);
    writer_ = w;
  }
  void Send(Msg type, const google::protobuf::MessageLite* message = nullptr) {
    std::lock_guard lock(mu_);
    if (writer_ == nullptr) return;
    // A failed send shows on the reading side too, which handles it.
    Status s = message ? writer_->Send(type, *message) : writer_->Send(type);
    if (s.ok()) (void)writer_->Flush();
  }

 private:
  std::mutex mu_;
  FrameWriter* writer_ = nullptr;
};

// Each second while post-copy lasts: the source's reader sees the link
// alive even when nothing faults.
class Heartbeat {
 public:
  explicit Heartbeat(CurrentWriter& w)
      : thread_([this, &w] {
          std::unique_lock lock(mu_);
          while (!cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; })) {
            lock.unlock();
            w.Send(Msg::kAlive);
            lock.lock();
          }
        }) {}
  ~Heartbeat() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

struct Received {
  Status status;
  bool refused = false;
};

Result<image::PageRun> ParseRun(const Frame& f) {
  image::PageRunHeader h;
  if (f.payload.size() < image::kPageRunHeaderSize) {
    return Error::Corrupt("a page frame shorter than its header");
  }
  memcpy(&h, f.payload.data(), sizeof h);
  if (h.npages == 0 || h.addr % image::kPageSize != 0 ||
      f.payload.size() != image::kPageRunHeaderSize + uint64_t{h.npages} * image::kPageSize) {
    return Error::Corrupt(
        fmt::format("a page frame for pid {} at {:#x} of the wrong size", h.pid, h.addr));
  }
  return image::PageRun{
      h.pid, h.addr, h.npages,
      reinterpret_cast<const uint8_t*>(f.payload.data()) + image::kPageRunHeaderSize};
}

Received ReceivePages(FrameReader& in, mem::LazyPager& pager) {
  for (;;) {
    Result<Frame> f = in.Next();
    if (!f.ok()) return {std::move(f).error().Context("post-copy"), false};
    if (f->type == Msg::kPagesEnd) return {Ok(), false};
    if (f->type == Msg::kRefuse) return {Refused(in.peer(), *f), true};
    if (f->type != Msg::kPages) {
      return {Error::Corrupt(
                  fmt::format("{} sent a {} frame during post-copy", in.peer(), MsgName(f->type))),
              true};
    }
    Result<image::PageRun> run = ParseRun(*f);
    if (!run.ok()) return {std::move(run).error(), true};
    Status added = pager.store().Add(*run);
    if (!added.ok()) return {std::move(added).error(), true};
  }
}

MissingPages WhatIsMissing(mem::PageStore& store) {
  MissingPages m;
  for (int pid : store.pids()) {
    MissingPages::Proc* p = m.add_procs();
    p->set_pid(pid);
    for (const mem::Range& r : store.Missing(pid)) {
      p->add_starts(r.start);
      p->add_ends(r.end);
    }
  }
  return m;
}

// Connections until one resumes this migration; others are refused.
Result<std::unique_ptr<Channel>> AwaitResume(const PostcopyDestination& options,
                                             mem::PageStore& store, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return Error::Timeout(
          fmt::format("the source did not come back within {} s", options.recovery_ms / 1000));
    }
    Result<std::unique_ptr<Channel>> c = options.accept(static_cast<int>(left.count()));
    if (!c.ok()) continue;  // a peer that failed the handshake
    std::unique_ptr<Channel> channel = std::move(c).value();
    channel->SetTimeout(options.alive_timeout_ms);
    FrameWriter out(*channel);
    FrameReader in(*channel, channel->peer());
    Result<Hello> hello = in.ExpectMessage<Hello>(Msg::kHello, "resume");
    if (!hello.ok()) continue;
    if (!hello->resume() || hello->migration_id() != options.migration_id) {
      Refuse r;
      r.set_reason("this destination is busy with the post-copy of another migration");
      (void)out.Send(Msg::kRefuse, r);
      (void)out.Flush();
      continue;
    }
    if (!out.Send(Msg::kMissing, WhatIsMissing(store)).ok() || !out.Flush().ok()) continue;
    return channel;
  }
}

}  // namespace

Result<Channel*> ReceivePostcopy(const sys::Env& env, const PostcopyDestination& options,
                                 Channel& first, mem::LazyPager& pager,
                                 std::unique_ptr<Channel>* owned, int* reconnects) {
  CurrentWriter writer;
  pager.OnMissing([&writer](int pid, uint64_t addr) {
    PageRequest r;
    r.set_pid(pid);
    r.set_addr(addr);
    writer.Send(Msg::kPageRequest, &r);
  });
  Heartbeat heartbeat(writer);
  Channel* channel = &first;
  for (;;) {
    channel->SetTimeout(options.alive_timeout_ms);
    FrameWriter out(*channel);
    FrameReader in(*channel, channel->peer());
    writer.Set(&out);
    // Asks for every page a fault awaits: those since the tree runs, or
    // since the link broke.
    pager.Resume();
    Received r = ReceivePages(in, pager);
    writer.Set(nullptr);
    if (r.status.ok()) {
      pager.store().Close(Ok());
      return channel;
    }
    if (r.refused || !options.accept) {
      pager.store().Close(r.status.error());
      return std::move(r.status).error();
    }
    pager.Pause();
    channel->Close();
    env.log.Warn(fmt::format(
        "post-copy: the link to the source broke ({}); the tree's threads that fault on pages "
        "still there wait; waiting up to {} s for the source to come back",
        r.status.error().ToString(), options.recovery_ms / 1000));
    Result<std::unique_ptr<Channel>> next = AwaitResume(
        options, pager.store(), Clock::now() + std::chrono::milliseconds(options.recovery_ms));
    if (!next.ok()) {
      pager.store().Close(next.error());
      return std::move(next).error();
    }
    *owned = std::move(next).value();
    channel = owned->get();
    ++*reconnects;
    env.log.Info(fmt::format("post-copy: the source is back ({})", channel->peer()));
  }
}

}  // namespace stasis::migrate
