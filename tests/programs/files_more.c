/* files_more: files beyond the basics (files.c has the basics).
 *
 * In DIR ($TMPDIR/fm, on disk, not tmpfs):
 *   gone:    gone.bin, O_RDWR, 20000 pattern bytes then a hole then 100
 *            bytes at 1 MiB, mode 0640, offset 1234, then unlinked. A second
 *            description of it (reopened through /proc/self/fd, O_RDONLY,
 *            offset 77).
 *   tmp:     O_TMPFILE|O_RDWR in DIR, 5000 bytes, offset 100; tmp2 = dup.
 *   appf:    app.log O_RDWR|O_APPEND.
 *   direct:  direct.bin, O_RDONLY|O_DIRECT, offset 4096.
 *   opath_*: O_PATH fds of a regular file, the directory, a symlink
 *            (O_PATH|O_NOFOLLOW) and a FIFO.
 *   dirfd:   DIR/sub with 60 entries, O_RDONLY|O_DIRECTORY, partly read
 *            with getdents64.
 * After the trigger: each fd is the same kind of file with the same flags,
 * offset and contents; the unlinked ones are still unlinked and nothing
 * was left in DIR; reading the directory goes on where it stopped.
 */
// Cases (the format is in CMakeLists.txt):
// stasis-selftest: selftest.files_more ${PROGRAM}
// Unlinked and O_TMPFILE files (contents in the image), O_APPEND, O_DIRECT,
// O_PATH of four file types, a directory read part way.
// stasis-case: program.files_more ${PROGRAM} --inspect
// stasis-case: program.files_more.cycles3 ${PROGRAM} --cycles 3
// stasis-case: program.files_more.nobody ${PROGRAM} --user nobody
#include "common.h"

#include <dirent.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>

#define GONE_LEN 20000
#define GONE_FAR (1 << 20)
#define TMP_LEN 5000
#define NENTRIES 60

struct saved {
  const char *name;
  int fd;
  int fl;
  struct stat st;
  char link[PATH_MAX];
};

static void save(struct saved *s, const char *name, int fd) {
  s->name = name;
  s->fd = fd;
  s->fl = fcntl(fd, F_GETFL);
  SETUP(fstat(fd, &s->st) == 0, "fstat %s", name);
  char p[64];
  snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(p, s->link, sizeof s->link - 1);
  s->link[n > 0 ? n : 0] = '\0';
}

static void check_same(const struct saved *s) {
  struct stat st;
  int fl = fcntl(s->fd, F_GETFL);
  CHECK(fl == s->fl, "%s (fd %d): F_GETFL %#o, before %#o", s->name, s->fd, fl, s->fl);
  CHECK(fstat(s->fd, &st) == 0, "%s: fstat: %s", s->name, strerror(errno));
  CHECK((st.st_mode & S_IFMT) == (s->st.st_mode & S_IFMT), "%s: file type %o, before %o", s->name,
        st.st_mode & S_IFMT, s->st.st_mode & S_IFMT);
  CHECK(st.st_size == s->st.st_size, "%s: size %lld, before %lld", s->name, (long long)st.st_size,
        (long long)s->st.st_size);
  CHECK(st.st_nlink == s->st.st_nlink, "%s: nlink %lu, before %lu", s->name, (unsigned long)st.st_nlink,
        (unsigned long)s->st.st_nlink);
  if (s->st.st_nlink != 0) {
    CHECK(st.st_dev == s->st.st_dev && st.st_ino == s->st.st_ino, "%s: not the same inode", s->name);
    char p[64], link[PATH_MAX];
    snprintf(p, sizeof p, "/proc/self/fd/%d", s->fd);
    ssize_t n = readlink(p, link, sizeof link - 1);
    link[n > 0 ? n : 0] = '\0';
    CHECK(strcmp(link, s->link) == 0, "%s: link '%s', before '%s'", s->name, link, s->link);
  } else {
    CHECK((st.st_mode & 07777) == (s->st.st_mode & 07777), "%s: mode %o, before %o", s->name,
          st.st_mode & 07777, s->st.st_mode & 07777);
    CHECK(st.st_uid == s->st.st_uid && st.st_gid == s->st.st_gid, "%s: owner %u:%u, before %u:%u", s->name,
          st.st_uid, st.st_gid, s->st.st_uid, s->st.st_gid);
  }
}

static off_t pos(int fd) { return lseek(fd, 0, SEEK_CUR); }

/* Names from one getdents64 call into names[] (skipping . and ..). */
static int getdents_names(int fd, char names[][32], int max, size_t bufsize) {
  static char buf[4096];
  long n = syscall(SYS_getdents64, fd, buf, bufsize);
  int count = 0;
  for (long off = 0; off < n;) {
    struct dirent64 *d = (struct dirent64 *)(buf + off);
    if (strcmp(d->d_name, ".") && strcmp(d->d_name, "..") && count < max)
      snprintf(names[count++], 32, "%.31s", d->d_name);
    off += d->d_reclen;
  }
  return n < 0 ? -1 : count;
}

int main(int argc, char **argv) {
  install_trigger(SA_RESTART);
  char dir[PATH_MAX];
  static char top[PATH_MAX];
  SETUP(realpath(work_dir(argc, argv), top), "realpath");
  /* A directory of our own: the runner writes into the top one. */
  SETUP(snprintf(dir, sizeof dir, "%s/fm", top) > 0 && mkdir(dir, 0755) == 0, "mkdir %s/fm", top);
  struct statfs sfs;
  SETUP(statfs(dir, &sfs) == 0, "statfs");
  SETUP(sfs.f_type != 0x01021994, "%s is tmpfs; this test needs a disk filesystem", dir);
  static char path[PATH_MAX + 64];
  static uint8_t buf[GONE_LEN];

  /* gone.bin: unlinked while open. */
  snprintf(path, sizeof path, "%s/gone.bin", dir);
  int gone = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  SETUP(gone >= 0, "create %s", path);
  fill(buf, GONE_LEN, 11);
  SETUP(write(gone, buf, GONE_LEN) == GONE_LEN, "write gone");
  SETUP(pwrite(gone, buf, 100, GONE_FAR) == 100, "write far");
  SETUP(fchmod(gone, 0640) == 0 && lseek(gone, 1234, SEEK_SET) == 1234, "gone setup");
  SETUP(unlink(path) == 0, "unlink");
  char self[64];
  snprintf(self, sizeof self, "/proc/self/fd/%d", gone);
  int gone_ro = open(self, O_RDONLY);
  SETUP(gone_ro >= 0 && lseek(gone_ro, 77, SEEK_SET) == 77, "reopen gone");

  /* An O_TMPFILE and its dup. */
  int tmp = open(dir, O_TMPFILE | O_RDWR, 0600);
  SETUP(tmp >= 0, "O_TMPFILE in %s", dir);
  fill(buf, TMP_LEN, 12);
  SETUP(write(tmp, buf, TMP_LEN) == TMP_LEN && lseek(tmp, 100, SEEK_SET) == 100, "tmp setup");
  int tmp2 = dup(tmp);

  /* O_APPEND read-write. */
  snprintf(path, sizeof path, "%s/app.log", dir);
  int appf = open(path, O_RDWR | O_CREAT | O_APPEND, 0644);
  SETUP(appf >= 0 && write(appf, "one\n", 4) == 4 && lseek(appf, 2, SEEK_SET) == 2, "app.log");

  /* O_DIRECT. */
  snprintf(path, sizeof path, "%s/direct.bin", dir);
  int w = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  fill(buf, 4 * 4096, 13);
  SETUP(w >= 0 && write(w, buf, 4 * 4096) == 4 * 4096 && fsync(w) == 0, "direct.bin");
  close(w);
  int direct = open(path, O_RDONLY | O_DIRECT);
  SETUP(direct >= 0 && lseek(direct, 4096, SEEK_SET) == 4096, "O_DIRECT open");

  /* O_PATH of a file, a directory, a symlink and a FIFO. */
  int opath_file = open(path, O_PATH);
  int opath_dir = open(dir, O_PATH | O_DIRECTORY);
  snprintf(path, sizeof path, "%s/link", dir);
  SETUP(symlink("direct.bin", path) == 0, "symlink");
  int opath_link = open(path, O_PATH | O_NOFOLLOW);
  snprintf(path, sizeof path, "%s/fifo", dir);
  SETUP(mkfifo(path, 0600) == 0, "mkfifo");
  int opath_fifo = open(path, O_PATH);
  SETUP(opath_file >= 0 && opath_dir >= 0 && opath_link >= 0 && opath_fifo >= 0, "O_PATH opens");

  /* A directory read part way. */
  snprintf(path, sizeof path, "%s/sub", dir);
  SETUP(mkdir(path, 0755) == 0, "mkdir sub");
  for (int i = 0; i < NENTRIES; i++) {
    char f[PATH_MAX + 100];
    snprintf(f, sizeof f, "%s/entry-%02d", path, i);
    int fd = open(f, O_WRONLY | O_CREAT, 0644);
    SETUP(fd >= 0, "create %s", f);
    close(fd);
  }
  int dirfd = open(path, O_RDONLY | O_DIRECTORY);
  SETUP(dirfd >= 0, "open sub");
  static char first[NENTRIES][32], rest[NENTRIES + 2][32];
  int nfirst = getdents_names(dirfd, first, NENTRIES, 600);
  SETUP(nfirst > 0 && nfirst < NENTRIES, "first getdents gave %d entries", nfirst);
  off_t dirpos = pos(dirfd);

  struct saved s[] = {{0}, {0}, {0}, {0}, {0}, {0}, {0}, {0}, {0}, {0}, {0}};
  save(&s[0], "gone", gone);
  save(&s[1], "gone_ro", gone_ro);
  save(&s[2], "tmp", tmp);
  save(&s[3], "tmp2", tmp2);
  save(&s[4], "appf", appf);
  save(&s[5], "direct", direct);
  save(&s[6], "opath_file", opath_file);
  save(&s[7], "opath_dir", opath_dir);
  save(&s[8], "opath_link", opath_link);
  save(&s[9], "opath_fifo", opath_fifo);
  save(&s[10], "dirfd", dirfd);
  const int nsaved = sizeof s / sizeof s[0];
  SETUP(s[0].st.st_nlink == 0 && s[2].st.st_nlink == 0, "unlinked files have links");
  SETUP(S_ISLNK(s[8].st.st_mode) && S_ISFIFO(s[9].st.st_mode), "O_PATH symlink/fifo types");
  static char listing_before[8192];
  {
    DIR *d = opendir(dir);
    size_t o = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
      o += (size_t)snprintf(listing_before + o, sizeof listing_before - o, "%s/", e->d_name);
    if (d)
      closedir(d);
  }

  READY();
  wait_for_trigger();

  for (int i = 0; i < nsaved; i++)
    check_same(&s[i]);

  /* The unlinked file: offsets, contents, hole, one inode for both. */
  CHECK(pos(gone) == 1234 && pos(gone_ro) == 77, "gone offsets %lld and %lld, expected 1234 and 77",
        (long long)pos(gone), (long long)pos(gone_ro));
  struct stat a, b;
  CHECK(fstat(gone, &a) == 0 && fstat(gone_ro, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev,
        "the two descriptions of gone.bin are different inodes");
  static uint8_t in[GONE_LEN];
  CHECK(pread(gone_ro, in, GONE_LEN, 0) == GONE_LEN && mismatch(in, GONE_LEN, 11) < 0,
        "gone.bin contents differ at %ld", mismatch(in, GONE_LEN, 11));
  CHECK(pread(gone_ro, in, 100, GONE_FAR) == 100 && mismatch(in, 100, 11) < 0, "gone.bin far bytes differ");
  CHECK(pread(gone_ro, in, 4096, GONE_LEN + 4096) == 4096 && nonzero(in, 4096) < 0, "gone.bin hole is not zeros");
  CHECK(a.st_blocks * 512 < GONE_FAR / 2, "gone.bin is not sparse any more (%lld blocks)", (long long)a.st_blocks);
  CHECK(write(gone, "Z", 1) == 1 && pread(gone_ro, in, 1, 1234) == 1 && in[0] == 'Z',
        "a write through one description is not seen through the other");
  char link[PATH_MAX] = "";
  snprintf(self, sizeof self, "/proc/self/fd/%d", gone);
  ssize_t n = readlink(self, link, sizeof link - 1);
  link[n > 0 ? n : 0] = '\0';
  CHECK(strstr(link, " (deleted)") && strncmp(link, dir, strlen(dir)) == 0, "gone.bin link '%s'", link);

  /* The O_TMPFILE: contents, shared offset with the dup. */
  CHECK(pos(tmp) == 100, "tmp offset %lld", (long long)pos(tmp));
  CHECK(pread(tmp, in, TMP_LEN, 0) == TMP_LEN && mismatch(in, TMP_LEN, 12) < 0, "tmp contents differ");
  CHECK(read(tmp2, in, 10) == 10 && pos(tmp) == 110, "tmp and its dup no longer share the offset");

  /* O_APPEND: the write goes to the end. */
  CHECK(pos(appf) == 2, "app.log offset %lld", (long long)pos(appf));
  CHECK(write(appf, "two\n", 4) == 4 && pread(appf, in, 8, 0) == 8 && memcmp(in, "one\ntwo\n", 8) == 0,
        "app.log after an O_APPEND write: '%.8s'", (char *)in);

  /* O_DIRECT: an aligned read at the offset. */
  CHECK(pos(direct) == 4096, "direct offset %lld", (long long)pos(direct));
  static uint8_t aligned[4096] __attribute__((aligned(4096)));
  CHECK(read(direct, aligned, 4096) == 4096, "O_DIRECT read: %s", strerror(errno));
  CHECK(memcmp(aligned, buf + 4096, 4096) == 0, "O_DIRECT read the wrong bytes");

  /* O_PATH: still only paths. */
  CHECK(read(opath_file, in, 1) < 0 && errno == EBADF, "read on an O_PATH fd did not fail with EBADF");
  struct stat ls;
  CHECK(fstatat(opath_dir, "direct.bin", &ls, 0) == 0 && ls.st_size == 4 * 4096, "fstatat through O_PATH dir");
  char target[64] = "";
  n = readlinkat(opath_link, "", target, sizeof target - 1);
  target[n > 0 ? n : 0] = '\0';
  CHECK(strcmp(target, "direct.bin") == 0, "readlinkat(O_PATH symlink) '%s'", target);

  /* The directory goes on where it stopped. */
  CHECK(pos(dirfd) == dirpos, "directory offset %lld, before %lld", (long long)pos(dirfd), (long long)dirpos);
  int nrest = 0, got;
  while ((got = getdents_names(dirfd, rest + nrest, NENTRIES + 2 - nrest, 4096)) > 0)
    nrest += got;
  CHECK(nfirst + nrest == NENTRIES, "directory: %d entries before the dump and %d after, expected %d in all",
        nfirst, nrest, NENTRIES);
  for (int i = 0; i < nrest; i++)
    for (int j = 0; j < nfirst; j++)
      CHECK(strcmp(rest[i], first[j]) != 0, "directory entry %s read twice", rest[i]);

  /* The restore left nothing behind in DIR. */
  static char listing_after[8192];
  DIR *d = opendir(dir);
  size_t o = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    o += (size_t)snprintf(listing_after + o, sizeof listing_after - o, "%s/", e->d_name);
  if (d)
    closedir(d);
  CHECK(strcmp(listing_before, listing_after) == 0, "DIR changed: before '%s', after '%s'", listing_before,
        listing_after);
  return FINISH();
}
