#include "kinds/tcp_states.h"

#include <gtest/gtest.h>
#include <netinet/tcp.h>

namespace stasis::kinds::tcp_states {
namespace {

// SIOCOUTQ counts an unacknowledged FIN, SIOCOUTQNSD an unsent one; the
// queues the image carries are bytes only.
TEST(TcpStates, FinIsTakenOutOfTheQueueLengths) {
  struct Case {
    int state, outq, unsent;
    int want_outq, want_unsent;
    bool fin_queued, fin_unsent, fin_received;
  } cases[] = {
      {TCP_ESTABLISHED, 10, 4, 10, 4, false, false, false},
      {TCP_FIN_WAIT1, 11, 0, 10, 0, true, false, false},  // FIN sent, not acked
      {TCP_FIN_WAIT1, 11, 5, 10, 4, true, true, false},   // FIN behind unsent data
      {TCP_FIN_WAIT1, 1, 1, 0, 0, true, true, false},     // FIN alone, window closed
      {TCP_FIN_WAIT2, 0, 0, 0, 0, true, false, false},    // FIN acked
      {TCP_CLOSE_WAIT, 3, 0, 3, 0, false, false, true},   // peer's FIN in rcv_nxt
      {TCP_LAST_ACK, 8, 8, 7, 7, true, true, true},
      {TCP_CLOSING, 1, 0, 0, 0, true, false, true},
  };
  for (const Case& c : cases) {
    image::TcpSocketState s;
    s.set_state(c.state);
    int outq = c.outq, unsent = c.unsent;
    AccountFins(c.state, &outq, &unsent, &s);
    SCOPED_TRACE(StateName(c.state));
    EXPECT_EQ(outq, c.want_outq);
    EXPECT_EQ(unsent, c.want_unsent);
    EXPECT_EQ(s.fin_queued(), c.fin_queued);
    EXPECT_EQ(s.fin_unsent(), c.fin_unsent);
    EXPECT_EQ(s.fin_received(), c.fin_received);
  }
}

TEST(TcpStates, DataEndsBeforeOurFin) {
  image::TcpSocketState s;
  s.set_send_seq(1000);
  EXPECT_EQ(SendDataEnd(s), 1000u);
  s.set_fin_queued(true);
  EXPECT_EQ(SendDataEnd(s), 999u);
  s.set_send_seq(0);  // wraps like the kernel's sequence space
  EXPECT_EQ(SendDataEnd(s), 0xffffffffu);
}

TEST(TcpStates, HalfClosedStates) {
  for (int st : {TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING}) {
    EXPECT_TRUE(IsHalfClosed(st)) << StateName(st);
  }
  for (int st :
       {TCP_ESTABLISHED, TCP_SYN_SENT, TCP_SYN_RECV, TCP_TIME_WAIT, TCP_CLOSE, TCP_LISTEN}) {
    EXPECT_FALSE(IsHalfClosed(st)) << StateName(st);
  }
  EXPECT_STREQ(StateName(TCP_SYN_SENT), "SYN_SENT");
}

}  // namespace
}  // namespace stasis::kinds::tcp_states
