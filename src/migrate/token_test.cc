#include "migrate/token.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace stasis::migrate {
namespace {

// A directory of token files, removed with everything in it on every path.
class TokenDir {
 public:
  TokenDir() {
    char dir[] = "/tmp/stasis-token-test-XXXXXX";
    if (mkdtemp(dir) != nullptr) path_ = dir;
  }
  ~TokenDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  bool ok() const { return !path_.empty(); }
  // Writes `bytes` to a new file with `mode` (chmod'ed, past the umask).
  std::string File(const std::string& name, const std::string& bytes, mode_t mode) {
    std::string path = path_ + "/" + name;
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return "";
    bool written = write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size());
    close(fd);
    if (!written || chmod(path.c_str(), mode) != 0) return "";
    return path;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

constexpr char kGood[] = "0123456789abcdef0123";

void ExpectRefused(const Result<std::string>& got, ErrorCode code, const std::string& path,
                   const std::string& words) {
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code(), code) << got.error().ToString();
  EXPECT_NE(got.error().message().find(path), std::string::npos) << got.error().message();
  EXPECT_NE(got.error().message().find(words), std::string::npos) << got.error().message();
}

TEST(TokenFile, ReadsTheBytesWithoutOneTrailingNewline) {
  TokenDir dir;
  ASSERT_TRUE(dir.ok());
  std::string plain = dir.File("plain", kGood, 0600);
  std::string line = dir.File("line", std::string(kGood) + "\n", 0400);
  std::string two = dir.File("two", std::string(kGood) + "\n\n", 0600);
  auto a = ReadTokenFile(plain);
  auto b = ReadTokenFile(line);
  auto c = ReadTokenFile(two);
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  ASSERT_TRUE(b.ok()) << b.error().ToString();
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  EXPECT_EQ(*a, kGood);
  EXPECT_EQ(*b, kGood);
  EXPECT_EQ(*c, std::string(kGood) + "\n");  // only one newline is the editor's
}

TEST(TokenFile, RefusesWhatOthersMayRead) {
  TokenDir dir;
  ASSERT_TRUE(dir.ok());
  std::string world = dir.File("world", kGood, 0644);
  std::string group = dir.File("group", kGood, 0640);
  std::string group_write = dir.File("group-write", kGood, 0620);
  ExpectRefused(ReadTokenFile(world), ErrorCode::kPermission, world, "mode 0644");
  ExpectRefused(ReadTokenFile(group), ErrorCode::kPermission, group, "mode 0640");
  ExpectRefused(ReadTokenFile(group_write), ErrorCode::kPermission, group_write, "group or others");
}

TEST(TokenFile, RefusesAnotherUsersFile) {
  TokenDir dir;
  ASSERT_TRUE(dir.ok());
  std::string theirs = dir.File("theirs", kGood, 0600);
  // 65534 (nobody): needs CAP_CHOWN, which the tests have as root.
  ASSERT_EQ(chown(theirs.c_str(), 65534, 65534), 0);
  ExpectRefused(ReadTokenFile(theirs), ErrorCode::kPermission, theirs, "owned by uid 65534");
}

TEST(TokenFile, RefusesEmptyShortAndNonFiles) {
  TokenDir dir;
  ASSERT_TRUE(dir.ok());
  std::string empty = dir.File("empty", "", 0600);
  std::string newline = dir.File("newline", "\n", 0600);
  std::string short_token = dir.File("short", "0123456789abcde\n", 0600);  // 15 bytes
  std::string long_token = dir.File("long", std::string(kMaxTokenBytes + 2, 'x'), 0600);
  std::string sub = dir.path() + "/sub";
  ASSERT_EQ(mkdir(sub.c_str(), 0700), 0);
  std::string fifo = dir.path() + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);

  ExpectRefused(ReadTokenFile(empty), ErrorCode::kInvalid, empty, "empty");
  ExpectRefused(ReadTokenFile(newline), ErrorCode::kInvalid, newline, "empty");
  ExpectRefused(ReadTokenFile(short_token), ErrorCode::kInvalid, short_token, "fewer than 16");
  ExpectRefused(ReadTokenFile(long_token), ErrorCode::kInvalid, long_token, "longer than");
  ExpectRefused(ReadTokenFile(sub), ErrorCode::kInvalid, sub, "not a regular file");
  ExpectRefused(ReadTokenFile(fifo), ErrorCode::kInvalid, fifo, "not a regular file");
  std::string missing = dir.path() + "/missing";
  ExpectRefused(ReadTokenFile(missing), ErrorCode::kNotFound, missing, "does not exist");
}

TEST(TokenFile, SixteenBytesAreEnough) {
  TokenDir dir;
  ASSERT_TRUE(dir.ok());
  std::string exact = dir.File("exact", "0123456789abcdef\n", 0600);
  auto got = ReadTokenFile(exact);
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  EXPECT_EQ(got->size(), kMinTokenBytes);
}

}  // namespace
}  // namespace stasis::migrate
