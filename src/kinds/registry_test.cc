// The registry's tables are whole and the documents listing them agree.
#include "kinds/registry.h"

#include <gtest/gtest.h>
#include <linux/netlink.h>
#include <sys/socket.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace stasis::kinds {
namespace {

std::string ReadSourceFile(const std::string& relative) {
  // STASIS_TEST_DATA is <source>/tests/unit/data.
  std::ifstream in(std::string(STASIS_TEST_DATA) + "/../../../" + relative);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(Registry, FdKindsAreWholeAndFoundByName) {
  std::set<std::string> names;
  for (const FdKind* kind : FdKinds()) {
    ASSERT_NE(kind, nullptr);
    EXPECT_TRUE(names.insert(kind->name).second) << "two fd kinds named " << kind->name;
    EXPECT_NE(kind->matches, nullptr) << kind->name;
    EXPECT_NE(kind->dump, nullptr) << kind->name;
    EXPECT_NE(kind->restore, nullptr) << kind->name;
    EXPECT_NE(std::string(kind->summary), "") << kind->name;
    EXPECT_EQ(FindFdKind(kind->name), kind);
  }
  EXPECT_EQ(FindFdKind("no such kind"), nullptr);
  EXPECT_EQ(FindFdKind(""), nullptr);
}

TEST(Registry, ProcessKindsAreWholeAndFoundByName) {
  std::set<std::string> names;
  for (const ProcessKind* kind : ProcessKinds()) {
    ASSERT_NE(kind, nullptr);
    EXPECT_TRUE(names.insert(kind->name).second) << "two process kinds named " << kind->name;
    EXPECT_NE(kind->dump, nullptr) << kind->name;
    EXPECT_NE(kind->restore, nullptr) << kind->name;
    EXPECT_NE(std::string(kind->summary), "") << kind->name;
    EXPECT_EQ(FindProcessKind(kind->name), kind);
  }
  EXPECT_EQ(FindProcessKind("no such kind"), nullptr);
}

TEST(Registry, MatchOrderKeepsItsReasons) {
  // shmem before regular_file (an unlinked tmpfs file is shared memory),
  // regular_file before chardev and fifo (it takes their O_PATH fds).
  auto position = [](std::string_view name) {
    size_t i = 0;
    for (const FdKind* kind : FdKinds()) {
      if (kind->name == name) return i;
      ++i;
    }
    return i;
  };
  EXPECT_LT(position("shmem"), position("regular"));
  EXPECT_LT(position("regular"), position("chardev"));
  EXPECT_LT(position("regular"), position("fifo"));
}

TEST(Registry, DocsListTheRegisteredKinds) {
  std::string list = KindsMarkdown();
  const char* fix = "; run ./scripts/update-kinds-docs.sh";
  std::string doc = ReadSourceFile("docs/kinds.md");
  EXPECT_NE(doc.find("\n\n" + list), std::string::npos)
      << "docs/kinds.md differs from `stasis kinds`" << fix;
  std::string readme = ReadSourceFile("README.md");
  EXPECT_NE(readme.find("<!-- kinds: begin -->\n\n" + list + "\n<!-- kinds: end -->"),
            std::string::npos)
      << "README.md's list of kinds differs from `stasis kinds`" << fix;
}

// A socket no kind carries is refused naming its family, type and protocol,
// so the user knows which object of the program is in the way.
TEST(Registry, UnsupportedSocketIsNamedByFamily) {
  FdDumpInput in;
  in.pid = 42;
  in.fd = 7;
  in.link = "socket:[1234]";
  in.local.reset(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
  ASSERT_TRUE(in.local.valid());
  Error e = UnsupportedFd(in);
  EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
  EXPECT_NE(e.message().find("pid 42 fd 7"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find("raw netlink socket (protocol 0)"), std::string::npos) << e.message();
}

}  // namespace
}  // namespace stasis::kinds
