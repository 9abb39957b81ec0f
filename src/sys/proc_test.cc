#include "sys/proc.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <thread>

namespace stasis::sys::proc {
namespace {

namespace fs = std::filesystem;

std::string Fixture(const std::string& name) {
  Result<std::string> text = ReadFile(std::string(STASIS_TEST_DATA) + "/proc/" + name);
  if (!text.ok()) ADD_FAILURE() << text.error().ToString();
  return text.ok() ? text.value() : "";
}

size_t CountLines(std::string_view text) { return std::count(text.begin(), text.end(), '\n'); }

template <typename T>
void ExpectInvalid(const Result<T>& r, const std::string& message) {
  ASSERT_FALSE(r.ok()) << "expected error: " << message;
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalid);
  EXPECT_EQ(r.error().message(), message);
}

// --- maps --------------------------------------------------------------------

TEST(ProcMapsTest, ParsesEveryCapturedLine) {
  for (const char* name :
       {"maps_cat.txt", "python3_maps.txt", "weird_maps.txt", "escape_maps.txt"}) {
    std::string text = Fixture(name);
    auto maps = ParseMaps(text);
    ASSERT_TRUE(maps.ok()) << name << ": " << maps.error().ToString();
    EXPECT_EQ(maps->size(), CountLines(text)) << name;
    for (const MapsEntry& e : *maps) EXPECT_LT(e.start, e.end) << name;
  }
}

TEST(ProcMapsTest, FileBackedEntry) {
  auto maps = ParseMaps(Fixture("python3_maps.txt"));
  ASSERT_TRUE(maps.ok());
  const MapsEntry& e = (*maps)[1];
  EXPECT_EQ(e.start, 0x559c5616e000u);
  EXPECT_EQ(e.end, 0x559c5616f000u);
  EXPECT_TRUE(e.read && e.exec && !e.write && !e.shared);
  EXPECT_EQ(e.pgoff, 0x1000u);
  EXPECT_EQ(e.dev_major, 0xfeu);
  EXPECT_EQ(e.dev_minor, 0u);
  EXPECT_EQ(e.inode, 18624u);
  EXPECT_EQ(e.path, "/root/.pyenv/versions/3.11.7/bin/python3.11");
}

TEST(ProcMapsTest, PseudoPathsSpacesAndDeleted) {
  auto maps = ParseMaps(Fixture("weird_maps.txt"));
  ASSERT_TRUE(maps.ok());
  auto find = [&](std::string_view path) {
    return std::find_if(maps->begin(), maps->end(), [&](auto& e) { return e.path == path; });
  };
  auto deleted = find("/tmp/stasis fixture file (deleted)");
  ASSERT_NE(deleted, maps->end());
  EXPECT_TRUE(deleted->shared && deleted->write);
  EXPECT_EQ(deleted->inode, 10952913u);
  for (const char* pseudo : {"[heap]", "[stack]", "[vvar]", "[vvar_vclock]", "[vdso]"}) {
    EXPECT_NE(find(pseudo), maps->end()) << pseudo;
  }
  auto vsyscall = find("[vsyscall]");
  ASSERT_NE(vsyscall, maps->end());
  EXPECT_EQ(vsyscall->start, 0xffffffffff600000u);
  EXPECT_TRUE(vsyscall->exec && !vsyscall->read);
}

TEST(ProcMapsTest, KernelEscapesNewlineInPathButNotBackslashOrTab) {
  auto maps = ParseMaps(Fixture("escape_maps.txt"));
  ASSERT_TRUE(maps.ok());
  EXPECT_TRUE(std::any_of(maps->begin(), maps->end(),
                          [](auto& e) { return e.path == "/tmp/stasis\\012new\\line\ttab"; }));
}

TEST(ProcMapsTest, HandWrittenEdgeCases) {
  auto maps = ParseMaps(
      "7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n"
      "7f0000001000-7f0000002000 r--s 0000a000 103:0f 42      /a b/c  \n"
      "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 18446744073709551615 [x]");
  ASSERT_TRUE(maps.ok()) << maps.error().ToString();
  ASSERT_EQ(maps->size(), 3u);
  EXPECT_EQ((*maps)[0].path, "");
  EXPECT_EQ((*maps)[1].path, "/a b/c  ");  // a name may end in blanks
  EXPECT_EQ((*maps)[1].dev_major, 0x103u);
  EXPECT_EQ((*maps)[1].dev_minor, 0xfu);
  EXPECT_EQ((*maps)[1].pgoff, 0xa000u);
  EXPECT_EQ((*maps)[2].inode, UINT64_MAX);
  EXPECT_TRUE(ParseMaps("")->empty());
  EXPECT_TRUE(ParseMaps(Fixture("zombie_maps.txt"))->empty());
}

TEST(ProcMapsTest, RejectsMalformedLines) {
  const std::string good = "1000-2000 r-xp 00000000 fe:00 1 /bin/x\n";
  ExpectInvalid(ParseMaps(good + good + "xyz\n"), "maps line 3: bad address range 'xyz'");
  ExpectInvalid(ParseMaps(good + "\n" + good), "maps line 2: bad address range ''");
  ExpectInvalid(ParseMaps("2000-1000 r-xp 0 fe:00 1"),
                "maps line 1: bad address range '2000-1000'");
  ExpectInvalid(ParseMaps("1fffffffffffffffff-2 r-xp 0 fe:00 1"),
                "maps line 1: bad address range '1fffffffffffffffff-2'");
  ExpectInvalid(ParseMaps("+1000-2000 r-xp 0 fe:00 1"),
                "maps line 1: bad address range '+1000-2000'");
  ExpectInvalid(ParseMaps("1000-2000 rwzp 0 fe:00 1"), "maps line 1: bad permissions 'rwzp'");
  ExpectInvalid(ParseMaps("1000-2000 r-x 0 fe:00 1"), "maps line 1: bad permissions 'r-x'");
  ExpectInvalid(ParseMaps("1000-2000 r-xp 0 fe00 1"), "maps line 1: bad device 'fe00'");
  ExpectInvalid(ParseMaps("1000-2000 r-xp 0g fe:00 1"), "maps line 1: bad offset '0g'");
  ExpectInvalid(ParseMaps("1000-2000 r-xp 00000000 fe:00"), "maps line 1: bad inode ''");
  ExpectInvalid(ParseMaps("1000-2000 r-xp 0 fe:00 18446744073709551616 /x"),
                "maps line 1: bad inode '18446744073709551616'");
  ExpectInvalid(ParseMaps(std::string(200, 'z')),
                "maps line 1: bad address range '" + std::string(60, 'z') + "...'");
}

// --- smaps -------------------------------------------------------------------

TEST(ProcSmapsTest, ParsesEveryCapturedEntry) {
  for (const char* name : {"smaps_cat.txt", "python3_smaps.txt", "weird_smaps.txt"}) {
    std::string text = Fixture(name);
    auto smaps = ParseSmaps(text);
    ASSERT_TRUE(smaps.ok()) << name << ": " << smaps.error().ToString();
    size_t headers = 0;
    for (size_t i = text.find("VmFlags:"); i != std::string::npos;
         i = text.find("VmFlags:", i + 1)) {
      ++headers;
    }
    EXPECT_EQ(smaps->size(), headers) << name;
    for (const SmapsEntry& e : *smaps) EXPECT_FALSE(e.vm_flags.empty()) << name;
  }
}

TEST(ProcSmapsTest, SizesAndFlags) {
  auto smaps = ParseSmaps(Fixture("python3_smaps.txt"));
  ASSERT_TRUE(smaps.ok());
  uint64_t total_rss = 0;
  for (const SmapsEntry& e : *smaps) total_rss += e.rss_kb;
  EXPECT_EQ(total_rss, 13684u);
  auto heap =
      std::find_if(smaps->begin(), smaps->end(), [](auto& e) { return e.map.path == "[heap]"; });
  ASSERT_NE(heap, smaps->end());
  EXPECT_EQ(heap->rss_kb, 1632u);
  EXPECT_EQ(heap->anonymous_kb, 1632u);
  EXPECT_EQ(heap->private_dirty_kb, 1632u);
  EXPECT_EQ(heap->swap_kb, 0u);
  EXPECT_EQ(heap->anon_huge_kb, 0u);
  EXPECT_EQ(heap->vm_flags, (std::vector<std::string>{"rd", "wr", "mr", "mw", "me", "ac"}));
  // vsyscall is execute-only: its VmFlags line is just "ex".
  EXPECT_EQ(smaps->back().map.path, "[vsyscall]");
  EXPECT_EQ(smaps->back().vm_flags, std::vector<std::string>{"ex"});
}

TEST(ProcSmapsTest, VvarVclockAndDeletedSharedFile) {
  auto smaps = ParseSmaps(Fixture("weird_smaps.txt"));
  ASSERT_TRUE(smaps.ok());
  auto find = [&](std::string_view path) {
    return std::find_if(smaps->begin(), smaps->end(), [&](auto& e) { return e.map.path == path; });
  };
  auto vclock = find("[vvar_vclock]");
  ASSERT_NE(vclock, smaps->end());
  EXPECT_TRUE(HasVmFlag(*vclock, "io"));
  EXPECT_TRUE(HasVmFlag(*vclock, "pf"));
  EXPECT_FALSE(HasVmFlag(*vclock, "wr"));
  auto deleted = find("/tmp/stasis fixture file (deleted)");
  ASSERT_NE(deleted, smaps->end());
  EXPECT_TRUE(HasVmFlag(*deleted, "sh"));
  EXPECT_TRUE(deleted->map.shared);
}

TEST(ProcSmapsTest, HandWrittenEdgeCases) {
  auto smaps = ParseSmaps(
      "1000-3000 rw-p 00000000 00:00 0 \n"
      "Rss:    18446744073709551615 kB\n"
      "FutureKey:  banana\n"
      "Swap:        4 kB\n"
      "VmFlags: rd wr \n"
      "3000-4000 r--p 00000000 00:00 0 \n");
  ASSERT_TRUE(smaps.ok()) << smaps.error().ToString();
  ASSERT_EQ(smaps->size(), 2u);
  EXPECT_EQ((*smaps)[0].rss_kb, UINT64_MAX);
  EXPECT_EQ((*smaps)[0].swap_kb, 4u);
  EXPECT_EQ((*smaps)[0].vm_flags, (std::vector<std::string>{"rd", "wr"}));
  EXPECT_TRUE((*smaps)[1].vm_flags.empty());
  EXPECT_TRUE(ParseSmaps("")->empty());
}

TEST(ProcSmapsTest, RejectsMalformedLines) {
  const std::string header = "1000-2000 rw-p 00000000 00:00 0\n";
  ExpectInvalid(ParseSmaps("Rss: 4 kB\n" + header),
                "smaps line 1: 'Rss' before any mapping header");
  ExpectInvalid(ParseSmaps(header + "Rss:  x kB\n"), "smaps line 2 (Rss): bad size 'x'");
  ExpectInvalid(ParseSmaps(header + "Anonymous:\n"), "smaps line 2 (Anonymous): bad size ''");
  ExpectInvalid(ParseSmaps(header + "Swap: 18446744073709551616 kB\n"),
                "smaps line 2 (Swap): bad size '18446744073709551616'");
  ExpectInvalid(ParseSmaps(header + "garbage\n"), "smaps line 2: bad address range 'garbage'");
}

// --- status ------------------------------------------------------------------

// The lines every kernel Stasis supports prints (no Umask, NS*, CapAmb,
// NoNewPrivs, Seccomp*: as from an old kernel or, for Umask, a zombie).
const std::string kMinimalStatus =
    "Name:\tx\nState:\tS (sleeping)\nTgid:\t7\nPid:\t7\nPPid:\t1\nTracerPid:\t0\n"
    "Uid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t\nThreads:\t1\n"
    "SigPnd:\t0\nShdPnd:\t0\nSigBlk:\t0\nSigIgn:\t0\nSigCgt:\t0\n"
    "CapInh:\t0\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t0\n";

std::string Replace(std::string text, const std::string& from, const std::string& to) {
  size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

TEST(ProcStatusTest, CapturedPython) {
  auto s = ParseStatus(Fixture("python3_status.txt"));
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(s->name, "python3");
  EXPECT_EQ(s->umask, 022u);
  EXPECT_EQ(s->state, 'R');
  EXPECT_EQ(s->tgid, 3040);
  EXPECT_EQ(s->pid, 3040);
  EXPECT_EQ(s->ppid, 3032);
  EXPECT_EQ(s->tracer_pid, 0);
  EXPECT_EQ(s->uid[3], 0u);
  EXPECT_TRUE(s->groups.empty());  // the kernel prints "Groups:\t \n"
  EXPECT_EQ(s->ns_tgid, std::vector<int>{3040});
  EXPECT_EQ(s->ns_pgid, std::vector<int>{3032});
  EXPECT_EQ(s->ns_sid, std::vector<int>{2224});
  EXPECT_EQ(s->threads, 1);
  EXPECT_EQ(s->sig_ign, 0x1001000u);
  EXPECT_EQ(s->sig_cgt, 0x2u);
  EXPECT_EQ(s->cap_prm, 0x1fffeffffffu);
  EXPECT_EQ(s->cap_amb, 0u);
  EXPECT_FALSE(s->no_new_privs);
  EXPECT_EQ(s->seccomp, 0);
}

TEST(ProcStatusTest, CapturedOddProcesses) {
  auto weird = ParseStatus(Fixture("weird_status.txt"));
  ASSERT_TRUE(weird.ok()) << weird.error().ToString();
  EXPECT_EQ(weird->name, "a) (b) c");
  EXPECT_EQ(weird->threads, 2);
  auto escaped = ParseStatus(Fixture("escape_status.txt"));
  ASSERT_TRUE(escaped.ok());
  EXPECT_EQ(escaped->name, "x\ny\\z\tw");
  auto zombie = ParseStatus(Fixture("zombie_status.txt"));  // has no Umask line
  ASSERT_TRUE(zombie.ok()) << zombie.error().ToString();
  EXPECT_EQ(zombie->state, 'Z');
  EXPECT_EQ(zombie->umask, 0u);
  auto kthread = ParseStatus(Fixture("kthread_status.txt"));
  ASSERT_TRUE(kthread.ok());
  EXPECT_EQ(kthread->ppid, 0);
  EXPECT_EQ(kthread->sig_ign, UINT64_MAX);
  EXPECT_TRUE(ParseStatus(Fixture("status_cat.txt")).ok());
}

TEST(ProcStatusTest, OptionalLinesDefaultToZero) {
  auto s = ParseStatus(kMinimalStatus);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(s->umask, 0u);
  EXPECT_EQ(s->cap_amb, 0u);
  EXPECT_FALSE(s->no_new_privs);
  EXPECT_EQ(s->seccomp, 0);
  EXPECT_EQ(s->seccomp_filters, 0);
  EXPECT_TRUE(s->ns_pid.empty());
  EXPECT_EQ(s->uid[0], 1u);
  EXPECT_EQ(s->gid[3], 8u);
}

TEST(ProcStatusTest, HandWrittenEdgeCases) {
  auto s = ParseStatus(Replace(kMinimalStatus, "Name:\tx\n", "Name:\t a\\\\b\\n \n") +
                       "Umask:\t0777\nNSpid:\t42\t1\nNoNewPrivs:\t1\nSeccomp:\t2\n"
                       "Seccomp_filters:\t3\nCapAmb:\tffffffffffffffff\nMystery:\tx\n");
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(s->name, " a\\b\n ");
  EXPECT_EQ(s->umask, 0777u);
  EXPECT_EQ(s->ns_pid, (std::vector<int>{42, 1}));
  EXPECT_TRUE(s->no_new_privs);
  EXPECT_EQ(s->seccomp, 2);
  EXPECT_EQ(s->seccomp_filters, 3);
  EXPECT_EQ(s->cap_amb, UINT64_MAX);
  auto groups = ParseStatus(Replace(kMinimalStatus, "Groups:\t\n", "Groups:\t4 24 4294967295 \n"));
  ASSERT_TRUE(groups.ok());
  EXPECT_EQ(groups->groups, (std::vector<uint32_t>{4, 24, 4294967295u}));
}

TEST(ProcStatusTest, RejectsMalformedInput) {
  ExpectInvalid(ParseStatus(""), "status: missing 'Name:' line");
  ExpectInvalid(ParseStatus(Replace(kMinimalStatus, "Pid:\t7\n", "")),
                "status: missing 'Pid:' line");
  ExpectInvalid(ParseStatus(Replace(kMinimalStatus, "Tgid:\t7\n", "garbage\n")),
                "status line 3: no ':' in 'garbage'");
  ExpectInvalid(ParseStatus(Replace(kMinimalStatus, "SigBlk:\t0", "SigBlk:\tzz")),
                "status line 13 (SigBlk): bad value 'zz'");
  ExpectInvalid(ParseStatus(Replace(kMinimalStatus, "Uid:\t1\t2\t3\t4", "Uid:\t1\t2\t3")),
                "status line 7 (Uid): bad value '1\t2\t3'");
  ExpectInvalid(ParseStatus(Replace(kMinimalStatus, "Gid:\t5", "Gid:\t4294967296")),
                "status line 8 (Gid): bad value '4294967296\t6\t7\t8'");
  ExpectInvalid(ParseStatus(kMinimalStatus + "Umask:\t0778\n"),
                "status line 20 (Umask): bad value '0778'");
  ExpectInvalid(ParseStatus(Replace(kMinimalStatus, "State:\tS (sleeping)", "State:")),
                "status line 2 (State): bad value ''");
  ExpectInvalid(ParseStatus(Replace(kMinimalStatus, "PPid:\t1", "PPid:\t99999999999")),
                "status line 5 (PPid): bad value '99999999999'");
}

// --- stat --------------------------------------------------------------------

// A stat line whose field N (per proc(5)) holds N, so a parser reading the
// wrong field shows it; overrides replace fields by number.
std::string StatLine(const std::string& comm, std::map<int, std::string> overrides = {},
                     int fields = 52) {
  std::string line = overrides.count(1) ? overrides[1] : "1";
  line += " (" + comm + ")";
  for (int n = 3; n <= fields; ++n) {
    line += " " + (overrides.count(n) ? overrides[n] : n == 3 ? "S" : std::to_string(n));
  }
  return line + "\n";
}

TEST(ProcStatTest, FieldNumbering) {
  auto st = ParseStat(StatLine("x"));
  ASSERT_TRUE(st.ok()) << st.error().ToString();
  EXPECT_EQ(st->pid, 1);
  EXPECT_EQ(st->state, 'S');
  EXPECT_EQ(st->ppid, 4);
  EXPECT_EQ(st->pgrp, 5);
  EXPECT_EQ(st->session, 6);
  EXPECT_EQ(st->tty_nr, 7);
  EXPECT_EQ(st->tpgid, 8);
  EXPECT_EQ(st->flags, 9u);
  EXPECT_EQ(st->nice, 19);
  EXPECT_EQ(st->num_threads, 20);
  EXPECT_EQ(st->start_code, 26u);
  EXPECT_EQ(st->end_code, 27u);
  EXPECT_EQ(st->start_stack, 28u);
  EXPECT_EQ(st->exit_signal, 38);
  EXPECT_EQ(st->start_data, 45u);
  EXPECT_EQ(st->end_data, 46u);
  EXPECT_EQ(st->start_brk, 47u);
  EXPECT_EQ(st->arg_start, 48u);
  EXPECT_EQ(st->arg_end, 49u);
  EXPECT_EQ(st->env_start, 50u);
  EXPECT_EQ(st->env_end, 51u);
}

TEST(ProcStatTest, CapturedPython) {
  auto st = ParseStat(Fixture("python3_stat.txt"));
  ASSERT_TRUE(st.ok()) << st.error().ToString();
  EXPECT_EQ(st->pid, 3040);
  EXPECT_EQ(st->comm, "python3");
  EXPECT_EQ(st->state, 'R');
  EXPECT_EQ(st->ppid, 3032);
  EXPECT_EQ(st->tpgid, -1);
  EXPECT_EQ(st->flags, 4194304u);
  EXPECT_EQ(st->start_code, 94129947598848u);
  EXPECT_EQ(st->start_stack, 140727725195216u);
  EXPECT_EQ(st->exit_signal, 17);
  EXPECT_EQ(st->start_brk, 94130821206016u);
  EXPECT_EQ(st->env_end, 140727725203407u);
}

TEST(ProcStatTest, CapturedOddComms) {
  auto weird = ParseStat(Fixture("weird_stat.txt"));
  ASSERT_TRUE(weird.ok()) << weird.error().ToString();
  EXPECT_EQ(weird->comm, "a) (b) c");
  EXPECT_EQ(weird->num_threads, 2);
  auto escaped = ParseStat(Fixture("escape_stat.txt"));  // stat does not escape the comm
  ASSERT_TRUE(escaped.ok()) << escaped.error().ToString();
  EXPECT_EQ(escaped->comm, "x\ny\\z\tw");
  EXPECT_EQ(escaped->state, 'R');
  auto zombie = ParseStat(Fixture("zombie_stat.txt"));
  ASSERT_TRUE(zombie.ok());
  EXPECT_EQ(zombie->state, 'Z');
  EXPECT_EQ(zombie->start_code, 0u);
  auto kthread = ParseStat(Fixture("kthread_stat.txt"));
  ASSERT_TRUE(kthread.ok());
  EXPECT_EQ(kthread->comm, "kthreadd");
  EXPECT_TRUE(ParseStat(Fixture("stat_cat.txt")).ok());
}

TEST(ProcStatTest, HandWrittenEdgeCases) {
  EXPECT_EQ(ParseStat(StatLine(") (")).value().comm, ") (");
  EXPECT_EQ(ParseStat(StatLine("")).value().comm, "");
  EXPECT_EQ(ParseStat(StatLine("a(b")).value().comm, "a(b");
  EXPECT_EQ(ParseStat(StatLine("x", {}, 60)).value().env_end, 51u);  // future fields ignored
  auto st = ParseStat(StatLine("x", {{19, "-20"}, {9, "18446744073709551615"}, {8, "-1"}}));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->nice, -20);
  EXPECT_EQ(st->flags, UINT64_MAX);
  EXPECT_EQ(st->tpgid, -1);
}

TEST(ProcStatTest, RejectsMalformedInput) {
  ExpectInvalid(ParseStat(""), "stat: no '(comm)' in ''");
  ExpectInvalid(ParseStat("12 (x R 1"), "stat: no '(comm)' in '12 (x R 1'");
  ExpectInvalid(ParseStat("12 )x( R 1"), "stat: no '(comm)' in '12 )x( R 1'");
  ExpectInvalid(ParseStat(StatLine("x", {{1, "abc"}})), "stat field 1 (pid): bad value 'abc'");
  ExpectInvalid(ParseStat(StatLine("x", {}, 40)), "stat: truncated after field 40, need 51");
  ExpectInvalid(ParseStat("1 (x)"), "stat: truncated after field 2, need 51");
  ExpectInvalid(ParseStat(StatLine("x", {{3, "RS"}})), "stat field 3 (state): bad value 'RS'");
  ExpectInvalid(ParseStat(StatLine("x", {{9, "18446744073709551616"}})),
                "stat field 9 (flags): bad value '18446744073709551616'");
  ExpectInvalid(ParseStat(StatLine("x", {{28, "-1"}})),
                "stat field 28 (start_stack): bad value '-1'");
}

// --- fdinfo ------------------------------------------------------------------

using Extra = std::vector<std::pair<std::string, std::string>>;

TEST(ProcFdInfoTest, RegularFilesAndLocks) {
  auto regular = ParseFdInfo(Fixture("fdinfo_regular.txt"));
  ASSERT_TRUE(regular.ok()) << regular.error().ToString();
  EXPECT_EQ(regular->pos, 3u);
  EXPECT_EQ(regular->flags, 02100000u);
  EXPECT_EQ(regular->mnt_id, 27);
  EXPECT_EQ(regular->ino, 733u);
  EXPECT_TRUE(regular->locks.empty());
  EXPECT_TRUE(regular->extra.empty());
  EXPECT_EQ(ParseFdInfo(Fixture("fdinfo_lockf.txt"))->locks,
            std::vector<std::string>{"1: POSIX  ADVISORY  WRITE 3040 fe:00:10952903 0 EOF"});
  EXPECT_EQ(ParseFdInfo(Fixture("fdinfo_posix_lock.txt"))->locks,
            std::vector<std::string>{"1: POSIX  ADVISORY  READ 3105 fe:00:10952913 100 109"});
  EXPECT_EQ(ParseFdInfo(Fixture("fdinfo_flock.txt"))->locks,
            std::vector<std::string>{"1: FLOCK  ADVISORY  READ 3105 fe:00:10952913 0 EOF"});
  EXPECT_TRUE(ParseFdInfo(Fixture("fdinfo_pipe.txt")).ok());
}

TEST(ProcFdInfoTest, NegativePosOfProcMemKeepsBitPattern) {
  auto mem = ParseFdInfo(Fixture("fdinfo_procmem_negative_pos.txt"));
  ASSERT_TRUE(mem.ok()) << mem.error().ToString();
  EXPECT_EQ(mem->pos, 0xffffffffff600000u);
}

TEST(ProcFdInfoTest, AnonInodeKinds) {
  auto epoll = ParseFdInfo(Fixture("fdinfo_epoll.txt"));
  ASSERT_TRUE(epoll.ok()) << epoll.error().ToString();
  EXPECT_EQ(epoll->flags, 02000002u);
  EXPECT_EQ(epoll->extra,
            (Extra{{"tfd", "7 events: 80000019 data:                7  pos:0 ino:17e1 sdev:f"},
                   {"tfd", "6 events:       19 data:                6  pos:0 ino:11 sdev:10"}}));
  EXPECT_EQ(ParseFdInfo(Fixture("fdinfo_eventfd.txt"))->extra,
            (Extra{{"eventfd-count", "5"}, {"eventfd-id", "1"}, {"eventfd-semaphore", "0"}}));
  EXPECT_EQ(ParseFdInfo(Fixture("fdinfo_signalfd.txt"))->extra,
            (Extra{{"sigmask", "0000000000004200"}}));
  EXPECT_EQ(ParseFdInfo(Fixture("fdinfo_timerfd.txt"))->extra,
            (Extra{{"clockid", "1"},
                   {"ticks", "0"},
                   {"settime flags", "00"},
                   {"it_value", "(99, 999977530)"},
                   {"it_interval", "(2, 500)"}}));
  EXPECT_EQ(ParseFdInfo(Fixture("fdinfo_inotify.txt"))->extra,
            (Extra{{"inotify",
                    "wd:1 ino:3c51a sdev:fe00000 mask:100 ignored_mask:0 "
                    "fhandle-bytes:8 fhandle-type:1 f_handle:1ac5030000000000"}}));
  EXPECT_EQ(ParseFdInfo(Fixture("fdinfo_pidfd.txt"))->extra,
            (Extra{{"Pid", "3105"}, {"NSpid", "3105"}}));
}

TEST(ProcFdInfoTest, HandWrittenEdgeCases) {
  // Before 3.15 there was no mnt_id, before 5.14 no ino.
  auto old = ParseFdInfo("pos:\t-1\nflags:\t0\n");
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(old->pos, UINT64_MAX);  // the bit pattern of the kernel's loff_t
  EXPECT_EQ(old->mnt_id, 0);
  auto odd = ParseFdInfo(
      "pos:\t0\nflags:\t037777777777\nlock:\t1: -> POSIX  ADVISORY  WRITE 9 00:05:1 0 EOF\n"
      "empty:\nfanotify flags:10 event-flags:0\n");
  ASSERT_TRUE(odd.ok()) << odd.error().ToString();
  EXPECT_EQ(odd->flags, 037777777777u);
  EXPECT_EQ(odd->locks, std::vector<std::string>{"1: -> POSIX  ADVISORY  WRITE 9 00:05:1 0 EOF"});
  EXPECT_EQ(odd->extra, (Extra{{"empty", ""}, {"fanotify", "flags:10 event-flags:0"}}));
}

TEST(ProcFdInfoTest, RejectsMalformedInput) {
  ExpectInvalid(ParseFdInfo(""), "fdinfo: missing 'pos:' line");
  ExpectInvalid(ParseFdInfo("pos:\t0\n"), "fdinfo: missing 'flags:' line");
  ExpectInvalid(ParseFdInfo("pos:\t0\nflags:\t08\n"), "fdinfo line 2 (flags): bad value '08'");
  ExpectInvalid(ParseFdInfo("pos:\t0\nflags:\t040000000000\n"),
                "fdinfo line 2 (flags): bad value '040000000000'");
  ExpectInvalid(ParseFdInfo("pos:\t1x\nflags:\t0\n"), "fdinfo line 1 (pos): bad value '1x'");
  // pos is printed signed (%lli), so this can only be garbage.
  ExpectInvalid(ParseFdInfo("pos:\t18446744073709551615\nflags:\t0\n"),
                "fdinfo line 1 (pos): bad value '18446744073709551615'");
  ExpectInvalid(ParseFdInfo("pos:\t0\nflags:\t0\ngarbage\n"),
                "fdinfo line 3: no 'key:' in 'garbage'");
  ExpectInvalid(ParseFdInfo("pos:\t0\nflags:\t0\n: x\n"), "fdinfo line 3: no 'key:' in ': x'");
  ExpectInvalid(ParseFdInfo("pos:\t0\nflags:\t0\nmnt_id:\t\n"),
                "fdinfo line 3 (mnt_id): bad value ''");
}

// --- readers -----------------------------------------------------------------

class ProcReadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "stasis_proc_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Write(const fs::path& path, const std::string& text) {
    fs::create_directories(path.parent_path());
    std::ofstream(path) << text;
  }
  fs::path dir_;
};

TEST_F(ProcReadTest, PathBuilders) {
  EXPECT_EQ(ProcPath(12, "maps"), "/proc/12/maps");
  EXPECT_EQ(ProcPath(12, ""), "/proc/12");
  EXPECT_EQ(ProcPath(12, "fdinfo/3", "/tmp/root"), "/tmp/root/12/fdinfo/3");
  EXPECT_EQ(TaskPath(12, 13, "children"), "/proc/12/task/13/children");
  EXPECT_EQ(TaskPath(12, 13, "", "/r"), "/r/12/task/13");
}

TEST_F(ProcReadTest, ReadFileWholeAndMissing) {
  std::string big(3 * 65536 + 17, 'q');
  big[100000] = '\0';  // binary safe
  Write(dir_ / "big", big);
  auto text = ReadFile((dir_ / "big").string());
  ASSERT_TRUE(text.ok()) << text.error().ToString();
  EXPECT_EQ(*text, big);
  std::string missing = (dir_ / "nope").string();
  auto gone = ReadFile(missing);
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(gone.error().errnum(), ENOENT);
  EXPECT_EQ(gone.error().message(), "open " + missing);
}

TEST_F(ProcReadTest, ReadsAndParsesOwnProcFiles) {
  auto maps = ParseMaps(ReadFile(ProcPath(getpid(), "maps")).value());
  ASSERT_TRUE(maps.ok()) << maps.error().ToString();
  auto here = reinterpret_cast<uint64_t>(&Fixture);
  EXPECT_TRUE(std::any_of(maps->begin(), maps->end(),
                          [&](auto& e) { return e.exec && e.start <= here && here < e.end; }));
  EXPECT_TRUE(ParseSmaps(ReadFile("/proc/self/smaps").value()).ok());
  auto status = ParseStatus(ReadFile("/proc/self/status").value());
  ASSERT_TRUE(status.ok()) << status.error().ToString();
  EXPECT_EQ(status->pid, getpid());
  auto stat = ParseStat(ReadFile("/proc/self/stat").value());
  ASSERT_TRUE(stat.ok()) << stat.error().ToString();
  EXPECT_EQ(stat->ppid, getppid());
  auto fdinfo = ParseFdInfo(ReadFile("/proc/self/fdinfo/0").value());
  EXPECT_TRUE(fdinfo.ok()) << fdinfo.error().ToString();
}

TEST_F(ProcReadTest, ReadLink) {
  std::string target = "/" + std::string(3000, 'd');
  fs::create_symlink(target, dir_ / "link");
  EXPECT_EQ(ReadLink((dir_ / "link").string()).value(), target);
  auto exe = ReadLink("/proc/self/exe");
  ASSERT_TRUE(exe.ok());
  EXPECT_TRUE(fs::equivalent(*exe, "/proc/self/exe")) << *exe;
  auto gone = ReadLink((dir_ / "nope").string());
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code(), ErrorCode::kNotFound);
}

TEST_F(ProcReadTest, ListsOwnTasksAndFds) {
  std::promise<void> done;
  std::thread thread([f = done.get_future()]() mutable { f.wait(); });
  auto tasks = ListTasks(getpid());
  done.set_value();
  thread.join();
  ASSERT_TRUE(tasks.ok());
  EXPECT_GE(tasks->size(), 2u);
  EXPECT_TRUE(std::is_sorted(tasks->begin(), tasks->end()));
  EXPECT_TRUE(std::count(tasks->begin(), tasks->end(), getpid()));
  int fd = dup(2);
  auto fds = ListFds(getpid());
  close(fd);
  ASSERT_TRUE(fds.ok());
  EXPECT_TRUE(std::is_sorted(fds->begin(), fds->end()));
  EXPECT_TRUE(std::count(fds->begin(), fds->end(), fd));
  EXPECT_EQ(ListFds(0x3fffffff).error().code(), ErrorCode::kNotFound);
}

// A child belongs to the thread that forked it, so one forked from a second
// thread appears only in that thread's children file.
TEST_F(ProcReadTest, ListsChildrenOfEveryThread) {
  auto spawn = [] {
    pid_t pid = fork();
    if (pid == 0) {
      pause();
      _exit(0);
    }
    return pid;
  };
  pid_t main_child = spawn();
  pid_t thread_child = -1;
  std::promise<void> done;
  std::promise<void> forked;
  std::thread thread([&, f = done.get_future()]() mutable {
    thread_child = spawn();
    forked.set_value();
    f.wait();
  });
  forked.get_future().wait();
  auto children = ListChildren(getpid());
  done.set_value();
  thread.join();
  for (pid_t pid : {main_child, thread_child}) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  ASSERT_TRUE(children.ok()) << children.error().ToString();
  // Only "includes": other tests in this binary may have children of their own.
  EXPECT_TRUE(std::is_sorted(children->begin(), children->end()));
  EXPECT_TRUE(std::count(children->begin(), children->end(), main_child));
  EXPECT_TRUE(std::count(children->begin(), children->end(), thread_child));
}

TEST_F(ProcReadTest, FakeRoot) {
  std::string root = dir_.string();
  Write(dir_ / "100/task/100/children", "5 3 ");
  Write(dir_ / "100/task/101/children", "3 9");
  Write(dir_ / "100/fd/10", "");
  Write(dir_ / "100/fd/2", "");
  Write(dir_ / "100/fd/x", "");
  EXPECT_EQ(ListTasks(100, root).value(), (std::vector<int>{100, 101}));
  EXPECT_EQ(ListFds(100, root).value(), (std::vector<int>{2, 10}));
  EXPECT_EQ(ListChildren(100, root).value(), (std::vector<int>{3, 5, 9}));
  fs::create_directories(dir_ / "200/task/200");
  EXPECT_EQ(ListChildren(200, root).error().code(), ErrorCode::kUnsupported);
  Write(dir_ / "300/task/300/children", "1 two");
  ExpectInvalid(ListChildren(300, root), root + "/300/task/300/children: bad pid list '1 two'");
  EXPECT_EQ(ListChildren(400, root).error().code(), ErrorCode::kNotFound);
}

}  // namespace
}  // namespace stasis::sys::proc
