/* inotify: watches with their numbers, masks and inodes.
 *
 * In DIR ($TMPDIR/in): a.txt, b.txt, sub/, lnk -> a.txt.
 *   N (IN_NONBLOCK): wd 1 DIR (IN_CREATE|IN_DELETE), wd 2 a.txt
 *   (IN_MODIFY|IN_ONESHOT), wd 3 removed, wd 4 sub (IN_ALL_EVENTS|
 *   IN_EXCL_UNLINK|IN_ONLYDIR), wd 5 and 6 removed, wd 7 b.txt
 *   (IN_ATTRIB), wd 8 the symlink itself (IN_DONT_FOLLOW|IN_ATTRIB). The
 *   IN_IGNORED events of the removals are read before READY.
 *   M: blocking, no watches.
 * After the trigger: fdinfo lists the same watches (wd, inode, device,
 * mask, handle); changes to the files raise events with the right wds; a
 * new watch gets a wd no watch has.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.inotify ${PROGRAM}
// stasis-case: program.inotify ${PROGRAM} --inspect
// stasis-case: program.inotify.cycles3 ${PROGRAM} --cycles 3
#include "common.h"

#include <limits.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#define MAXW 16

/* The "inotify ..." lines of fd's fdinfo, sorted, in out (one per line). */
static int watch_lines(int fd, char out[][256]) {
  char path[64];
  static char text[8192];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  if (read_text(path, text, sizeof text) < 0)
    return -1;
  int n = 0;
  for (char *l = strstr(text, "inotify "); l && n < MAXW; l = strstr(l + 1, "\ninotify ")) {
    if (*l == '\n')
      l++;
    char *eol = strchr(l, '\n');
    snprintf(out[n++], 256, "%.*s", (int)(eol ? eol - l : (long)strlen(l)), l);
  }
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++)
      if (strcmp(out[i], out[j]) > 0) {
        char t[256];
        memcpy(t, out[i], 256);
        memcpy(out[i], out[j], 256);
        memcpy(out[j], t, 256);
      }
  return n;
}

int main(int argc, char **argv) {
  install_trigger(SA_RESTART);
  static char top[PATH_MAX], dir[PATH_MAX + 8], a[PATH_MAX + 16], b[PATH_MAX + 16], sub[PATH_MAX + 16],
      lnk[PATH_MAX + 16], extra[PATH_MAX + 16];
  SETUP(realpath(work_dir(argc, argv), top), "realpath");
  snprintf(dir, sizeof dir, "%s/in", top);
  snprintf(a, sizeof a, "%s/a.txt", dir);
  snprintf(b, sizeof b, "%s/b.txt", dir);
  snprintf(sub, sizeof sub, "%s/sub", dir);
  snprintf(lnk, sizeof lnk, "%s/lnk", dir);
  snprintf(extra, sizeof extra, "%s/extra", dir);
  SETUP(mkdir(dir, 0755) == 0 && mkdir(sub, 0755) == 0, "mkdir");
  int fd = open(a, O_WRONLY | O_CREAT, 0644);
  SETUP(fd >= 0, "create a");
  close(fd);
  fd = open(b, O_WRONLY | O_CREAT, 0644);
  SETUP(fd >= 0, "create b");
  close(fd);
  SETUP(symlink("a.txt", lnk) == 0, "symlink");
  SETUP(mkdir(extra, 0755) == 0, "mkdir extra");

  int n = inotify_init1(IN_NONBLOCK);
  int m = inotify_init1(IN_CLOEXEC);
  SETUP(n >= 0 && m >= 0, "inotify_init1");
  int wd[9] = {0};
  wd[1] = inotify_add_watch(n, dir, IN_CREATE | IN_DELETE);
  wd[2] = inotify_add_watch(n, a, IN_MODIFY | IN_ONESHOT);
  wd[3] = inotify_add_watch(n, b, IN_OPEN);
  wd[4] = inotify_add_watch(n, sub, IN_ALL_EVENTS | IN_EXCL_UNLINK | IN_ONLYDIR);
  wd[5] = inotify_add_watch(n, extra, IN_OPEN);
  SETUP(inotify_rm_watch(n, wd[3]) == 0 && inotify_rm_watch(n, wd[5]) == 0, "rm 3, 5");
  wd[6] = inotify_add_watch(n, extra, IN_OPEN);
  SETUP(inotify_rm_watch(n, wd[6]) == 0, "rm 6");
  wd[7] = inotify_add_watch(n, b, IN_ATTRIB);
  wd[8] = inotify_add_watch(n, lnk, IN_ATTRIB | IN_DONT_FOLLOW);
  for (int i = 1; i <= 8; i++)
    SETUP(wd[i] == i, "wd %d is %d", i, wd[i]);
  static char buf[4096] __attribute__((aligned(8)));
  while (read(n, buf, sizeof buf) > 0) {
  }
  int queued = -1;
  SETUP(ioctl(n, FIONREAD, &queued) == 0 && queued == 0, "events left: %d", queued);
  static char before[MAXW][256], after[MAXW][256];
  int nbefore = watch_lines(n, before);
  SETUP(nbefore == 5, "%d watch lines", nbefore);
  int fl_n = fcntl(n, F_GETFL), fl_m = fcntl(m, F_GETFL);

  READY();
  wait_for_trigger();

  int nafter = watch_lines(n, after);
  CHECK(nafter == nbefore, "%d watches, before %d", nafter, nbefore);
  for (int i = 0; i < nafter && i < nbefore; i++)
    CHECK(strcmp(after[i], before[i]) == 0, "watch '%s', before '%s'", after[i], before[i]);
  CHECK(watch_lines(m, after) == 0, "M has watches");
  CHECK(fcntl(n, F_GETFL) == fl_n && fcntl(m, F_GETFL) == fl_m, "F_GETFL %#o %#o, before %#o %#o", fcntl(n, F_GETFL),
        fcntl(m, F_GETFL), fl_n, fl_m);
  CHECK(fcntl(n, F_GETFD) == 0 && fcntl(m, F_GETFD) == FD_CLOEXEC, "F_GETFD");
  queued = -1;
  CHECK(ioctl(n, FIONREAD, &queued) == 0 && queued == 0, "%d bytes of events queued after the restore", queued);

  /* Events reach the right wds. */
  fd = open(a, O_WRONLY);
  CHECK(fd >= 0 && write(fd, "x", 1) == 1, "write a");
  close(fd);
  CHECK(chmod(b, 0600) == 0, "chmod b");
  fd = open(extra, O_RDONLY); /* its watches were removed: no event */
  close(fd);
  static char newf[PATH_MAX + 32];
  snprintf(newf, sizeof newf, "%s/new", dir);
  fd = open(newf, O_WRONLY | O_CREAT, 0644);
  close(fd);
  CHECK(lchown(lnk, getuid(), getgid()) == 0, "lchown lnk");
  int seen_modify = 0, seen_attrib = 0, seen_create = 0, seen_lnk = 0, other = 0;
  struct pollfd p = {n, POLLIN, 0};
  for (int tries = 0; tries < 50 && !(seen_modify && seen_attrib && seen_create && seen_lnk); tries++) {
    poll(&p, 1, 100);
    ssize_t r = read(n, buf, sizeof buf);
    for (ssize_t off = 0; r > 0 && off < r;) {
      struct inotify_event *e = (struct inotify_event *)(buf + off);
      if (e->wd == 2 && (e->mask & IN_MODIFY))
        seen_modify++;
      else if (e->wd == 2 && (e->mask & IN_IGNORED))
        ; /* IN_ONESHOT removes the watch after its event */
      else if (e->wd == 7 && (e->mask & IN_ATTRIB))
        seen_attrib++;
      else if (e->wd == 1 && (e->mask & IN_CREATE) && strcmp(e->name, "new") == 0)
        seen_create++;
      else if (e->wd == 8 && (e->mask & IN_ATTRIB))
        seen_lnk++;
      else
        other++;
      off += (ssize_t)sizeof *e + e->len;
    }
  }
  CHECK(seen_modify == 1 && seen_attrib == 1 && seen_create == 1 && seen_lnk == 1,
        "events: modify %d (wd 2), attrib %d (wd 7), create %d (wd 1), symlink attrib %d (wd 8)", seen_modify,
        seen_attrib, seen_create, seen_lnk);
  CHECK(other == 0, "%d unexpected events", other);
  int w9 = inotify_add_watch(n, extra, IN_OPEN);
  CHECK(w9 > 8, "a new watch got wd %d, which a live or earlier watch had", w9);
  return FINISH();
}
