package deliver_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/relaymail/relay/spool"
)

// TestLocalDeliveryPaused: while LocalPaused says so (the disk is below the
// store's reserve), a local recipient is not delivered and nothing about it
// is written, no attempt counted, while the remote recipient of the same
// message goes on; when the pause ends, the loop delivers it by itself.
func TestLocalDeliveryPaused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addUsers(t, e.boxes, "bob@example.test")
	var paused atomic.Bool
	var asked atomic.Int32
	paused.Store(true)
	cfg := defaultRetry
	cfg.LocalPaused = func() bool { asked.Add(1); return paused.Load() }
	fr := newRemote(e, by(ok(false), nil))
	id := send(t, e.sp, "sender@example.org", spool.MailParams{}, "Subject: paused\r\n\r\nbody\r\n",
		to("bob@example.test"), to("dave@remote.test"))
	before := rcpt(t, e.sp, id, "bob@example.test")
	e.start(t, cfg, fr)

	// The remote recipient is done: the loop has been through the message.
	waitFor(t, "the remote recipient to be delivered", func() (bool, string) {
		r := rcpt(t, e.sp, id, "dave@remote.test")
		return r.State == spool.Delivered, fmt.Sprintf("%+v", r)
	})
	// And it has looked again, a few rounds later.
	n := asked.Load()
	waitFor(t, "more rounds of the loop", func() (bool, string) {
		return asked.Load() >= n+4, fmt.Sprintf("asked %d times", asked.Load())
	})
	if got := rcpt(t, e.sp, id, "bob@example.test"); got.State != spool.Pending || got.Attempts != 0 ||
		!got.NextAttempt.Equal(before.NextAttempt) || !got.Reply.IsZero() {
		t.Errorf("local recipient while paused: %+v, want it pending and untouched (%+v)", got, before)
	}
	if ms := inbox(t, e.boxes, "bob@example.test"); len(ms) != 0 {
		t.Fatalf("bob's INBOX holds %d messages while delivery is paused", len(ms))
	}

	paused.Store(false)
	waitFor(t, "the message to be delivered once the pause ended", func() (bool, string) { return gone(e.sp, id) })
	checkDeliveredOnce(t, e.boxes, "bob@example.test", "Subject: paused\r\n\r\nbody\r\n")
	if calls := fr.seen(); len(calls) != 1 {
		t.Errorf("remote calls %s, want one", summary(calls))
	}
}
