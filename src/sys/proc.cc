#include "sys/proc.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <memory>
#include <optional>
#include <type_traits>

#include "sys/unique_fd.h"

namespace stasis::sys::proc {
namespace {

constexpr std::string_view kBlanks = " \t\n";

std::string_view Trim(std::string_view s) {
  size_t begin = s.find_first_not_of(kBlanks);
  if (begin == std::string_view::npos) return {};
  size_t end = s.find_last_not_of(kBlanks);
  return s.substr(begin, end - begin + 1);
}

// Offending text for an error message, cut short so garbage stays readable.
std::string Quote(std::string_view s) {
  constexpr size_t kMaxQuoted = 60;
  if (s.size() <= kMaxQuoted) return fmt::format("'{}'", s);
  return fmt::format("'{}...'", s.substr(0, kMaxQuoted));
}

// The whole of s must be a number; from_chars rejects signs on unsigned
// types and reports overflow instead of wrapping.
template <typename T>
bool ParseNum(std::string_view s, T* out, int base = 10) {
  if (s.empty()) return false;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out, base);
  return ec == std::errc() && end == s.data() + s.size();
}

// Next blank-separated token of *s, which advances past it.
std::string_view NextToken(std::string_view* s) {
  size_t begin = s->find_first_not_of(kBlanks);
  if (begin == std::string_view::npos) {
    *s = {};
    return {};
  }
  size_t end = std::min(s->find_first_of(kBlanks, begin), s->size());
  std::string_view token = s->substr(begin, end - begin);
  s->remove_prefix(end);
  return token;
}

std::vector<std::string_view> Tokens(std::string_view s) {
  std::vector<std::string_view> out;
  for (std::string_view t = NextToken(&s); !t.empty(); t = NextToken(&s)) out.push_back(t);
  return out;
}

template <typename T>
bool ParseList(std::string_view s, std::vector<T>* out) {
  std::vector<std::string_view> tokens = Tokens(s);
  out->assign(tokens.size(), T());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!ParseNum(tokens[i], &(*out)[i])) return false;
  }
  return true;
}

// Lines of text; the newline after the last line is optional. Numbers are
// 1-based, as an editor shows them.
class Lines {
 public:
  explicit Lines(std::string_view text) : rest_(text) {}
  bool Next(std::string_view* line) {
    if (rest_.empty()) return false;
    size_t nl = rest_.find('\n');
    *line = rest_.substr(0, nl);
    rest_.remove_prefix(nl == std::string_view::npos ? rest_.size() : nl + 1);
    ++number_;
    return true;
  }
  int number() const { return number_; }

 private:
  std::string_view rest_;
  int number_ = 0;
};

// --- maps --------------------------------------------------------------------

// "rwxp": a letter or '-' for each of read, write, exec; then shared or private.
bool ParsePerms(std::string_view p, MapsEntry* e) {
  if (p.size() != 4 || std::string_view("r-").find(p[0]) == std::string_view::npos ||
      std::string_view("w-").find(p[1]) == std::string_view::npos ||
      std::string_view("x-").find(p[2]) == std::string_view::npos ||
      std::string_view("sp").find(p[3]) == std::string_view::npos) {
    return false;
  }
  e->read = p[0] == 'r';
  e->write = p[1] == 'w';
  e->exec = p[2] == 'x';
  e->shared = p[3] == 's';
  return true;
}

// "start-end perms pgoff major:minor inode [padding path]", all hex except
// the inode. kind and number only go into error messages.
Result<MapsEntry> ParseMapsLine(std::string_view line, std::string_view kind, int number) {
  auto bad = [&](std::string_view what, std::string_view text) {
    return Error::Invalid(fmt::format("{} line {}: bad {} {}", kind, number, what, Quote(text)));
  };
  MapsEntry e;
  std::string_view rest = line;
  std::string_view range = NextToken(&rest);
  size_t dash = range.find('-');
  if (dash == std::string_view::npos || !ParseNum(range.substr(0, dash), &e.start, 16) ||
      !ParseNum(range.substr(dash + 1), &e.end, 16) || e.end <= e.start) {
    return bad("address range", range);
  }
  std::string_view perms = NextToken(&rest);
  if (!ParsePerms(perms, &e)) return bad("permissions", perms);
  std::string_view pgoff = NextToken(&rest);
  if (!ParseNum(pgoff, &e.pgoff, 16)) return bad("offset", pgoff);
  std::string_view dev = NextToken(&rest);
  size_t colon = dev.find(':');
  if (colon == std::string_view::npos || !ParseNum(dev.substr(0, colon), &e.dev_major, 16) ||
      !ParseNum(dev.substr(colon + 1), &e.dev_minor, 16)) {
    return bad("device", dev);
  }
  std::string_view inode = NextToken(&rest);
  if (!ParseNum(inode, &e.inode)) return bad("inode", inode);
  // The kernel pads with spaces up to a column before the path. Only the
  // padding goes: a file name may itself end in blanks, so no trailing trim.
  size_t path = rest.find_first_not_of(' ');
  if (path != std::string_view::npos) e.path = std::string(rest.substr(path));
  return e;
}

// --- smaps -------------------------------------------------------------------

struct SmapsSize {
  std::string_view key;
  uint64_t SmapsEntry::*field;
};

constexpr SmapsSize kSmapsSizes[] = {
    {"Rss", &SmapsEntry::rss_kb},
    {"Anonymous", &SmapsEntry::anonymous_kb},
    {"AnonHugePages", &SmapsEntry::anon_huge_kb},
    {"Swap", &SmapsEntry::swap_kb},
    {"Private_Dirty", &SmapsEntry::private_dirty_kb},
};

Status ApplySmapsLine(std::string_view key, std::string_view rest, int number, SmapsEntry* e) {
  if (key == "VmFlags") {
    std::vector<std::string_view> flags = Tokens(rest);
    e->vm_flags.assign(flags.begin(), flags.end());
    return Ok();
  }
  for (const SmapsSize& size : kSmapsSizes) {
    if (key != size.key) continue;
    std::string_view value = NextToken(&rest);
    if (!ParseNum(value, &(e->*size.field))) {
      return Error::Invalid(
          fmt::format("smaps line {} ({}): bad size {}", number, key, Quote(value)));
    }
    return Ok();
  }
  return Ok();  // Pss, KSM, THPeligible, ... and keys of kernels to come
}

// --- status ------------------------------------------------------------------

// The kernel escapes only '\n' and '\\' in the status Name (seq_escape_str
// with "\n\\"); tabs and other bytes come through raw.
std::string UnescapeName(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == 'n' || s[i + 1] == '\\')) {
      out += s[++i] == 'n' ? '\n' : '\\';
    } else {
      out += s[i];
    }
  }
  return out;
}

bool ParseIds(std::string_view s, uint32_t (&ids)[4]) {
  std::vector<uint32_t> list;
  if (!ParseList(s, &list) || list.size() != 4) return false;
  std::copy(list.begin(), list.end(), ids);
  return true;
}

bool ParseName(std::string_view s, ProcStatus* status) {
  status->name = UnescapeName(s);
  return true;
}

// "R (running)": the letter is what matters.
bool ParseState(std::string_view s, ProcStatus* status) {
  if (s.empty()) return false;
  status->state = s[0];
  return true;
}

bool ParseBool(std::string_view s, bool* out) {
  int value;
  if (!ParseNum(s, &value)) return false;
  *out = value != 0;
  return true;
}

struct StatusField {
  std::string_view key;
  bool required;
  bool (*parse)(std::string_view value, ProcStatus* s);
};

// Lines the kernel prints only sometimes are optional: Umask needs task->fs
// (gone in a zombie), NS* need 4.1, CapAmb 4.3, NoNewPrivs 4.10,
// Seccomp_filters 5.9.
constexpr StatusField kStatusFields[] = {
    {"Name", true, ParseName},
    {"Umask", false, [](auto v, auto* s) { return ParseNum(v, &s->umask, 8); }},
    {"State", true, ParseState},
    {"Tgid", true, [](auto v, auto* s) { return ParseNum(v, &s->tgid); }},
    {"Pid", true, [](auto v, auto* s) { return ParseNum(v, &s->pid); }},
    {"PPid", true, [](auto v, auto* s) { return ParseNum(v, &s->ppid); }},
    {"TracerPid", true, [](auto v, auto* s) { return ParseNum(v, &s->tracer_pid); }},
    {"Uid", true, [](auto v, auto* s) { return ParseIds(v, s->uid); }},
    {"Gid", true, [](auto v, auto* s) { return ParseIds(v, s->gid); }},
    {"Groups", true, [](auto v, auto* s) { return ParseList(v, &s->groups); }},
    {"NStgid", false, [](auto v, auto* s) { return ParseList(v, &s->ns_tgid); }},
    {"NSpid", false, [](auto v, auto* s) { return ParseList(v, &s->ns_pid); }},
    {"NSpgid", false, [](auto v, auto* s) { return ParseList(v, &s->ns_pgid); }},
    {"NSsid", false, [](auto v, auto* s) { return ParseList(v, &s->ns_sid); }},
    {"Threads", true, [](auto v, auto* s) { return ParseNum(v, &s->threads); }},
    {"SigPnd", true, [](auto v, auto* s) { return ParseNum(v, &s->sig_pnd, 16); }},
    {"ShdPnd", true, [](auto v, auto* s) { return ParseNum(v, &s->shd_pnd, 16); }},
    {"SigBlk", true, [](auto v, auto* s) { return ParseNum(v, &s->sig_blk, 16); }},
    {"SigIgn", true, [](auto v, auto* s) { return ParseNum(v, &s->sig_ign, 16); }},
    {"SigCgt", true, [](auto v, auto* s) { return ParseNum(v, &s->sig_cgt, 16); }},
    {"CapInh", true, [](auto v, auto* s) { return ParseNum(v, &s->cap_inh, 16); }},
    {"CapPrm", true, [](auto v, auto* s) { return ParseNum(v, &s->cap_prm, 16); }},
    {"CapEff", true, [](auto v, auto* s) { return ParseNum(v, &s->cap_eff, 16); }},
    {"CapBnd", true, [](auto v, auto* s) { return ParseNum(v, &s->cap_bnd, 16); }},
    {"CapAmb", false, [](auto v, auto* s) { return ParseNum(v, &s->cap_amb, 16); }},
    {"NoNewPrivs", false, [](auto v, auto* s) { return ParseBool(v, &s->no_new_privs); }},
    {"Seccomp", false, [](auto v, auto* s) { return ParseNum(v, &s->seccomp); }},
    {"Seccomp_filters", false, [](auto v, auto* s) { return ParseNum(v, &s->seccomp_filters); }},
};
constexpr size_t kNumStatusFields = std::size(kStatusFields);

// --- fdinfo ------------------------------------------------------------------

// Splits "key:\tvalue". inotify and fanotify lines print their first word
// without a colon ("inotify wd:1 ino:3c51a sdev:..."), so that word is the key.
std::optional<std::pair<std::string_view, std::string_view>> SplitFdInfoLine(
    std::string_view line) {
  for (std::string_view word : {"inotify ", "fanotify "}) {
    if (line.starts_with(word)) {
      return std::pair(word.substr(0, word.size() - 1), Trim(line.substr(word.size())));
    }
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || Trim(line.substr(0, colon)).empty()) return std::nullopt;
  return std::pair(Trim(line.substr(0, colon)), Trim(line.substr(colon + 1)));
}

// --- readers -----------------------------------------------------------------

// ENOENT and ESRCH mean the process or thread went away: kNotFound lets
// callers tell that race from a real failure.
Error SysError(std::string what, int errnum) {
  if (errnum == ENOENT || errnum == ESRCH) {
    return Error(ErrorCode::kNotFound, std::move(what), errnum);
  }
  return Error::FromErrno(std::move(what), errnum);
}

Result<std::vector<int>> ListNumericDir(const std::string& path) {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(path.c_str()), closedir);
  if (dir == nullptr) return SysError("opendir " + path, errno);
  std::vector<int> out;
  for (;;) {
    errno = 0;
    const dirent* entry = readdir(dir.get());
    if (entry == nullptr) {
      if (errno != 0) return SysError("readdir " + path, errno);
      break;
    }
    int value;
    if (ParseNum(std::string_view(entry->d_name), &value)) out.push_back(value);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

Result<std::vector<MapsEntry>> ParseMaps(std::string_view text) {
  std::vector<MapsEntry> out;
  Lines lines(text);
  std::string_view line;
  while (lines.Next(&line)) out.push_back(STASIS_TRY(ParseMapsLine(line, "maps", lines.number())));
  return out;
}

Result<std::vector<SmapsEntry>> ParseSmaps(std::string_view text) {
  std::vector<SmapsEntry> out;
  Lines lines(text);
  std::string_view line;
  while (lines.Next(&line)) {
    std::string_view rest = line;
    std::string_view first = NextToken(&rest);
    // Attribute lines start "Key:"; a header's first token is an address
    // range, which never holds a colon.
    if (first.empty() || first.back() != ':') {
      SmapsEntry entry;
      entry.map = STASIS_TRY(ParseMapsLine(line, "smaps", lines.number()));
      out.push_back(std::move(entry));
      continue;
    }
    first.remove_suffix(1);
    if (out.empty()) {
      return Error::Invalid(
          fmt::format("smaps line {}: {} before any mapping header", lines.number(), Quote(first)));
    }
    STASIS_TRY(ApplySmapsLine(first, rest, lines.number(), &out.back()));
  }
  return out;
}

bool HasVmFlag(const SmapsEntry& entry, std::string_view code) {
  return std::find(entry.vm_flags.begin(), entry.vm_flags.end(), code) != entry.vm_flags.end();
}

Result<ProcStatus> ParseStatus(std::string_view text) {
  ProcStatus status;
  bool seen[kNumStatusFields] = {};
  Lines lines(text);
  std::string_view line;
  while (lines.Next(&line)) {
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      return Error::Invalid(
          fmt::format("status line {}: no ':' in {}", lines.number(), Quote(line)));
    }
    std::string_view key = line.substr(0, colon);
    std::string_view value = line.substr(colon + 1);
    for (size_t i = 0; i < kNumStatusFields; ++i) {
      if (kStatusFields[i].key != key) continue;
      // A comm may begin or end in blanks: strip only the tab after "Name:".
      if (key == "Name") {
        if (value.starts_with('\t')) value.remove_prefix(1);
      } else {
        value = Trim(value);
      }
      if (!kStatusFields[i].parse(value, &status)) {
        return Error::Invalid(
            fmt::format("status line {} ({}): bad value {}", lines.number(), key, Quote(value)));
      }
      seen[i] = true;
      break;
    }
  }
  for (size_t i = 0; i < kNumStatusFields; ++i) {
    if (kStatusFields[i].required && !seen[i]) {
      return Error::Invalid(fmt::format("status: missing '{}:' line", kStatusFields[i].key));
    }
  }
  return status;
}

Result<ProcStat> ParseStat(std::string_view text) {
  // The comm is raw (spaces, parentheses, even newlines), so it ends at the
  // last ')' and the text is never split into lines.
  size_t open = text.find('(');
  size_t close = text.rfind(')');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open) {
    return Error::Invalid(fmt::format("stat: no '(comm)' in {}", Quote(text)));
  }
  ProcStat st;
  std::string_view pid = Trim(text.substr(0, open));
  if (!ParseNum(pid, &st.pid)) {
    return Error::Invalid(fmt::format("stat field 1 (pid): bad value {}", Quote(pid)));
  }
  st.comm = std::string(text.substr(open + 1, close - open - 1));
  // Fields from 3 (state) on, by proc(5) number. 52 (exit_code) and any
  // fields of kernels to come are ignored.
  constexpr int kFirst = 3;
  constexpr int kLastUsed = 51;
  std::vector<std::string_view> fields = Tokens(text.substr(close + 1));
  int last = kFirst - 1 + static_cast<int>(fields.size());
  if (last < kLastUsed) {
    return Error::Invalid(fmt::format("stat: truncated after field {}, need {}", last, kLastUsed));
  }
  auto get = [&](int number, std::string_view name, auto* out) -> Status {
    std::string_view field = fields[number - kFirst];
    bool ok = false;
    if constexpr (std::is_same_v<decltype(out), char*>) {
      ok = field.size() == 1;  // state is one letter
      if (ok) *out = field[0];
    } else {
      ok = ParseNum(field, out);
    }
    if (ok) return Ok();
    return Error::Invalid(
        fmt::format("stat field {} ({}): bad value {}", number, name, Quote(field)));
  };
  STASIS_TRY(get(3, "state", &st.state));
  STASIS_TRY(get(4, "ppid", &st.ppid));
  STASIS_TRY(get(5, "pgrp", &st.pgrp));
  STASIS_TRY(get(6, "session", &st.session));
  STASIS_TRY(get(7, "tty_nr", &st.tty_nr));
  STASIS_TRY(get(8, "tpgid", &st.tpgid));
  STASIS_TRY(get(9, "flags", &st.flags));
  STASIS_TRY(get(19, "nice", &st.nice));
  STASIS_TRY(get(20, "num_threads", &st.num_threads));
  STASIS_TRY(get(26, "start_code", &st.start_code));
  STASIS_TRY(get(27, "end_code", &st.end_code));
  STASIS_TRY(get(28, "start_stack", &st.start_stack));
  STASIS_TRY(get(38, "exit_signal", &st.exit_signal));
  STASIS_TRY(get(45, "start_data", &st.start_data));
  STASIS_TRY(get(46, "end_data", &st.end_data));
  STASIS_TRY(get(47, "start_brk", &st.start_brk));
  STASIS_TRY(get(48, "arg_start", &st.arg_start));
  STASIS_TRY(get(49, "arg_end", &st.arg_end));
  STASIS_TRY(get(50, "env_start", &st.env_start));
  STASIS_TRY(get(51, "env_end", &st.env_end));
  return st;
}

Result<FdInfo> ParseFdInfo(std::string_view text) {
  FdInfo info;
  bool have_pos = false;
  bool have_flags = false;
  Lines lines(text);
  std::string_view line;
  while (lines.Next(&line)) {
    auto split = SplitFdInfoLine(line);
    if (!split) {
      return Error::Invalid(
          fmt::format("fdinfo line {}: no 'key:' in {}", lines.number(), Quote(line)));
    }
    auto [key, value] = *split;
    bool ok = true;
    if (key == "pos") {
      // Printed with %lli: /proc/PID/mem seeked past 2^63 (the vsyscall page)
      // shows a negative pos. Keep its bit pattern.
      int64_t pos = 0;
      ok = have_pos = ParseNum(value, &pos);
      info.pos = static_cast<uint64_t>(pos);
    } else if (key == "flags") {
      ok = have_flags = ParseNum(value, &info.flags, 8);
    } else if (key == "mnt_id") {
      ok = ParseNum(value, &info.mnt_id);
    } else if (key == "ino") {
      ok = ParseNum(value, &info.ino);
    } else if (key == "lock") {
      info.locks.emplace_back(value);
    } else {
      info.extra.emplace_back(key, value);
    }
    if (!ok) {
      return Error::Invalid(
          fmt::format("fdinfo line {} ({}): bad value {}", lines.number(), key, Quote(value)));
    }
  }
  if (!have_pos || !have_flags) {
    return Error::Invalid(fmt::format("fdinfo: missing '{}:' line", have_pos ? "flags" : "pos"));
  }
  return info;
}

std::string ProcPath(pid_t pid, std::string_view rest, std::string_view root) {
  if (rest.empty()) return fmt::format("{}/{}", root, pid);
  return fmt::format("{}/{}/{}", root, pid, rest);
}

std::string TaskPath(pid_t pid, pid_t tid, std::string_view rest, std::string_view root) {
  if (rest.empty()) return fmt::format("{}/{}/task/{}", root, pid, tid);
  return fmt::format("{}/{}/task/{}/{}", root, pid, tid, rest);
}

Result<std::string> ReadFile(const std::string& path) {
  int raw;
  do {
    raw = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) return SysError("open " + path, errno);
  UniqueFd fd(raw);
  // Big reads: seq_file files such as maps are generated per read() call,
  // so fewer calls mean fewer chances to see a mapping change mid-file.
  constexpr size_t kChunk = size_t{64} * 1024;
  std::string out;
  for (;;) {
    size_t old_size = out.size();
    out.resize(old_size + kChunk);
    ssize_t n = read(fd.get(), out.data() + old_size, kChunk);
    int saved = errno;
    out.resize(old_size + (n > 0 ? n : 0));
    if (n == 0) return out;
    if (n < 0 && saved != EINTR) return SysError("read " + path, saved);
  }
}

Result<std::string> ReadLink(const std::string& path) {
  // proc links are capped at a page, but regular links are not: grow until
  // the result fits with room to spare (readlink does not report truncation).
  constexpr size_t kMaxLink = 1 << 20;
  for (size_t size = 256; size <= kMaxLink; size *= 2) {
    std::string buf(size, '\0');
    ssize_t n = readlink(path.c_str(), buf.data(), size);
    if (n < 0) return SysError("readlink " + path, errno);
    if (static_cast<size_t>(n) < size) {
      buf.resize(n);
      return buf;
    }
  }
  return Error::Invalid(fmt::format("readlink {}: target longer than {} bytes", path, kMaxLink));
}

Result<std::vector<int>> ListTasks(pid_t pid, std::string_view root) {
  return ListNumericDir(ProcPath(pid, "task", root));
}

Result<std::vector<int>> ListFds(pid_t pid, std::string_view root) {
  return ListNumericDir(ProcPath(pid, "fd", root));
}

Result<std::vector<int>> ListChildren(pid_t pid, std::string_view root) {
  std::vector<int> tasks = STASIS_TRY(ListTasks(pid, root));
  std::vector<int> children;
  for (int tid : tasks) {
    std::string path = TaskPath(pid, tid, "children", root);
    Result<std::string> text = ReadFile(path);
    if (!text.ok()) {
      if (text.error().code() != ErrorCode::kNotFound) return std::move(text).error();
      if (access(TaskPath(pid, tid, "", root).c_str(), F_OK) == 0) {
        return Error::Unsupported(path + " missing: kernel built without CONFIG_PROC_CHILDREN?");
      }
      continue;  // the thread exited after ListTasks saw it
    }
    // "123 456 " with a trailing blank and no newline.
    std::vector<int> pids;
    if (!ParseList(*text, &pids)) {
      return Error::Invalid(fmt::format("{}: bad pid list {}", path, Quote(*text)));
    }
    children.insert(children.end(), pids.begin(), pids.end());
  }
  std::sort(children.begin(), children.end());
  children.erase(std::unique(children.begin(), children.end()), children.end());
  return children;
}

}  // namespace stasis::sys::proc
