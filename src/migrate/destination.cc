#include "migrate/destination.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "mem/held_pages.h"
#include "migrate/hello.h"
#include "migrate/image_link.h"
#include "migrate/postcopy_dest.h"
#include "migrate/protocol.h"
#include "restore/spawn.h"

namespace stasis::migrate {

namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

Result<image::PageRun> ParseRun(const Frame& f) {
  if (f.payload.size() < image::kPageRunHeaderSize) {
    return Error::Corrupt("a page frame shorter than its header");
  }
  image::PageRunHeader h;
  memcpy(&h, f.payload.data(), sizeof h);
  image::PageRun run{
      h.pid, h.addr, h.npages,
      reinterpret_cast<const uint8_t*>(f.payload.data()) + image::kPageRunHeaderSize};
  if (h.npages == 0 || h.addr % image::kPageSize != 0 ||
      f.payload.size() != image::kPageRunHeaderSize + uint64_t{h.npages} * image::kPageSize) {
    return Error::Corrupt(
        fmt::format("a page frame for pid {} at {:#x} of the wrong size", h.pid, h.addr));
  }
  return run;
}

// Tells the source why, when it can still hear it.
Error Refusing(FrameWriter& out, Error e) {
  Refuse r;
  r.set_reason(e.ToString());
  (void)out.Send(Msg::kRefuse, r);
  (void)out.Flush();
  return e;
}

// The pre-copy rounds, up to the first frame of the image.
Result<std::string> HoldRounds(FrameReader& in, mem::HeldPages& held, ReceiveSummary& summary) {
  for (;;) {
    Frame f = STASIS_TRY_CTX(in.Next(), "pre-copy");
    switch (f.type) {
      case Msg::kPages: {
        image::PageRun run = STASIS_TRY(ParseRun(f));
        STASIS_TRY(held.Add(run.pid, run.addr, run.npages, run.data));
        summary.precopy_bytes += run.npages * image::kPageSize;
        break;
      }
      case Msg::kRoundEnd:
        summary.rounds++;
        break;
      case Msg::kImage:
        return std::move(f.payload);
      case Msg::kRefuse:
        return Refused(in.peer(), f);
      default:
        return Error::Corrupt(
            fmt::format("{} sent a {} frame during pre-copy", in.peer(), MsgName(f.type)));
    }
  }
}

}  // namespace

Result<ReceiveSummary> ServeMigration(const sys::Env& env, Channel& channel,
                                      const ReceiveOptions& options,
                                      const std::string* registered) {
  Clock::time_point start = Clock::now();
  ReceiveSummary summary;
  summary.peer = channel.peer();
  channel.SetTimeout(options.timeout_ms);
  FrameWriter out(channel);
  FrameReader in(channel, channel.peer());
  Hello hello = STASIS_TRY(in.ExpectMessage<Hello>(Msg::kHello, "receive"));
  summary.source = hello.hostname();
  summary.session_name = hello.session_name();
  HostFacts here = STASIS_TRY(ThisHost());
  Status fits = CheckHello(hello, here);
  if (fits.ok()) fits = CheckAddressFree(hello);
  if (!fits.ok()) return Refusing(out, std::move(fits).error());
  Accept accept;
  accept.set_hostname(here.hostname);
  STASIS_TRY(out.Send(Msg::kAccept, accept));
  STASIS_TRY(out.Flush());

  auto held = std::make_shared<mem::HeldPages>();
  std::string first = STASIS_TRY(HoldRounds(in, *held, summary));
  env.log.Info(
      fmt::format("{} pre-copy rounds: {} MiB held", summary.rounds, summary.precopy_bytes >> 20));

  ImageFramesSource image(in, std::move(first));
  restore::RestoreOptions ro = options.restore;
  ro.held = held;
  ro.deferred_allowed = hello.postcopy();
  // The held pages are served on fault and pushed while the tree runs:
  // the frozen time does not include writing them.
  ro.lazy = true;
  Clock::time_point restore_start = Clock::now();
  ro.before_release = [&](const restore::RestoreResult& r) -> Status {
    if (options.restore.before_release) STASIS_TRY(options.restore.before_release(r));
    Ready ready;
    summary.restore_ms = MsSince(restore_start);
    ready.set_restore_ms(summary.restore_ms);
    STASIS_TRY(out.Send(Msg::kReady, ready));
    STASIS_TRY(out.Flush());
    channel.SetTimeout(options.commit_timeout_ms);
    STASIS_TRY(in.Expect(Msg::kCommit, "wait for the source's commit"));
    channel.SetTimeout(options.timeout_ms);
    return Ok();
  };
  Result<restore::RestoreResult> restored = restore::Restore(env, ro, image);
  if (!restored.ok()) return Refusing(out, std::move(restored).error());
  summary.image_bytes = image.bytes();
  summary.root_pid = restored->host_pid;
  held->Clear();

  // The tree runs here now: whatever fails from here on, it is ours.
  std::shared_ptr<mem::LazyPager> pager = restored->pager;
  Status pages = Ok();
  // Post-copy may end on another connection than it began (a broken link
  // that came back): Done goes on that one.
  Channel* done_channel = &channel;
  std::unique_ptr<Channel> resumed;
  if (pager) {
    std::vector<int> pids = pager->store().pids();
    summary.postcopy = std::any_of(pids.begin(), pids.end(),
                                   [&](int pid) { return !pager->store().Missing(pid).empty(); });
    if (summary.postcopy) {
      PostcopyDestination link{hello.migration_id(), options.accept, 5000, options.recovery_ms};
      Result<Channel*> last =
          ReceivePostcopy(env, link, channel, *pager, &resumed, &summary.reconnects);
      if (last.ok()) {
        done_channel = *last;
      } else {
        pages = std::move(last).error();
      }
    }
    Status all_in = pager->Wait();
    if (pages.ok()) pages = std::move(all_in);
    // The init guards the tree until then (restore/spawn.h); on a failure
    // it kills it when the guard closes, rather than let it run with pages
    // it never got.
    if (pages.ok()) pages = restore::PagesIn(std::move(restored->page_guard));
    mem::LazyStats stats = pager->stats();
    summary.faults = stats.remote_faults;
    summary.blocktime_ms = stats.blocktime_ms;
  }
  STASIS_TRY_CTX(pages, "post-copy");
  Done done;
  done.set_session_name(registered ? *registered : "");
  done.set_root_pid(summary.root_pid);
  done.set_faults(summary.faults);
  done.set_blocktime_ms(summary.blocktime_ms);
  done.set_restore_ms(summary.restore_ms);
  FrameWriter done_out(*done_channel);
  STASIS_TRY(done_out.Send(Msg::kDone, done));
  STASIS_TRY(done_out.Flush());
  summary.total_ms = MsSince(start);
  return summary;
}

}  // namespace stasis::migrate
