package imapd_test

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/relaymail/relay/mailbox/imapd"
)

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cond()
}

// RFC 3501 §5.2 and §7.4.1: another session's flag changes, new messages
// and expunges reach a selected session at its next command; expunges not
// during FETCH, STORE or SEARCH (RFC 3501 §7.4.1), so sequence numbers stay
// put until then.
func TestTwoSessions(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	upd := newUpdates()
	a := ts.login(t, &imapclient.Options{UnilateralDataHandler: upd.handler()})
	if _, err := a.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	b := rawLogin(t, ts.addr)
	b.ok("SELECT INBOX")

	noop := func() {
		t.Helper()
		if err := a.Noop().Wait(); err != nil {
			t.Fatalf("NOOP: %v", err)
		}
	}

	// Flags.
	b.ok(`STORE 2 +FLAGS (\Flagged $Label1)`)
	noop()
	// imapclient hands unsolicited FETCH to the handler in a goroutine.
	waitFor(ioWait, func() bool { _, _, f := upd.snapshot(); return f[2] != nil })
	_, _, flags := upd.snapshot()
	if f := flags[2]; !hasFlag(f, imap.FlagFlagged) || !hasFlag(f, "$Label1") || len(flags) != 1 {
		t.Errorf("A after B's STORE: FETCH flags %v, want message 2 with \\Flagged $Label1", flags)
	}
	// A session's own STORE is answered once, not echoed again at its
	// next command. Read line by line: the absence of an unsolicited
	// FETCH that imapclient would hand to a goroutine cannot be awaited.
	c := rawLogin(t, ts.addr)
	c.ok("SELECT INBOX")
	if u := c.ok(`STORE 1 +FLAGS.SILENT (\Answered)`); len(u) != 0 {
		t.Errorf("STORE .SILENT answered %q", u)
	}
	if u := c.ok("NOOP"); len(find(u, "FETCH")) != 0 {
		t.Errorf("a session's own silent STORE echoed back: %q", u)
	}
	if u := b.ok("NOOP"); !slices.Contains(u, `* 1 FETCH (UID 1 FLAGS (\Answered))`) {
		t.Errorf("B after the other session's STORE: %q, want * 1 FETCH (UID 1 FLAGS (\\Answered))", u)
	}

	// New message.
	upd.reset()
	if _, st := b.appendLit("INBOX", "", sample(t, "plain.eml")); !strings.HasPrefix(st, "OK") {
		t.Fatalf("APPEND: %q", st)
	}
	noop()
	if exists, _, _ := upd.snapshot(); !slices.Equal(exists, []uint32{5}) {
		t.Errorf("A after B's APPEND: EXISTS %v, want [5]", exists)
	}

	// Expunge: held back during FETCH, sent at NOOP.
	upd.reset()
	b.ok(`STORE 3 +FLAGS.SILENT (\Deleted)`)
	if u := b.ok("EXPUNGE"); !slices.Equal(u, []string{"* 3 EXPUNGE"}) {
		t.Errorf("B EXPUNGE: %q", u)
	}
	buf := fetchOne(t, a, imap.SeqSetNum(4), &imap.FetchOptions{UID: true})
	if buf.UID != 4 {
		t.Errorf("A: FETCH 4 before the EXPUNGE is announced has UID %d, want 4 (sequence numbers must not shift)", buf.UID)
	}
	if _, exp, _ := upd.snapshot(); len(exp) != 0 {
		t.Errorf("A got EXPUNGE %v during FETCH (RFC 3501 §7.4.1 forbids)", exp)
	}
	noop()
	if _, exp, _ := upd.snapshot(); !slices.Equal(exp, []uint32{3}) {
		t.Errorf("A after B's EXPUNGE: EXPUNGE %v, want [3]", exp)
	}
	buf = fetchOne(t, a, imap.SeqSetNum(4), &imap.FetchOptions{UID: true})
	if buf.UID != 5 {
		t.Errorf("A: FETCH 4 after the EXPUNGE has UID %d, want 5", buf.UID)
	}
	if n := a.Mailbox().NumMessages; n != 4 {
		t.Errorf("A's view: %d messages, want 4", n)
	}

	// MOVE out of the mailbox by B is an expunge for A.
	upd.reset()
	b.ok("MOVE 1 Trash")
	noop()
	if _, exp, _ := upd.snapshot(); !slices.Equal(exp, []uint32{1}) {
		t.Errorf("A after B's MOVE: EXPUNGE %v, want [1]", exp)
	}
}

// RFC 2177: an idling client hears of a delivery without another command,
// and of flag changes and expunges by others.
func TestIdle(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	upd := newUpdates()
	a := ts.login(t, &imapclient.Options{UnilateralDataHandler: upd.handler()})
	if _, err := a.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	b := rawLogin(t, ts.addr)
	b.ok("SELECT INBOX")

	idle, err := a.Idle()
	if err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	start := time.Now()
	ts.deliver(t, sample(t, "multipart.eml"))
	// How soon is for the benchmarks and the interop test to say; here
	// it must come without another command.
	if !waitFor(ioWait, func() bool { e, _, _ := upd.snapshot(); return slices.Contains(e, 5) }) {
		e, _, _ := upd.snapshot()
		t.Fatalf("no EXISTS 5 in IDLE after a delivery (got %v)", e)
	}
	t.Logf("EXISTS after %v", time.Since(start))

	b.ok(`STORE 1 +FLAGS (\Seen)`)
	if !waitFor(ioWait, func() bool { _, _, f := upd.snapshot(); return hasFlag(f[1], imap.FlagSeen) }) {
		t.Errorf("no FETCH FLAGS in IDLE after B's STORE")
	}
	b.ok(`STORE 2 +FLAGS.SILENT (\Deleted)`)
	b.ok("EXPUNGE")
	if !waitFor(ioWait, func() bool { _, e, _ := upd.snapshot(); return slices.Contains(e, 2) }) {
		t.Errorf("no EXPUNGE in IDLE after B's EXPUNGE")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE done: %v", err)
	}
	// The client's view matches the server's.
	msgs, err := a.Fetch(imap.SeqSetNum(1, 2, 3, 4), &imap.FetchOptions{UID: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var uids []imap.UID
	for _, m := range msgs {
		uids = append(uids, m.UID)
	}
	if !slices.Equal(uids, []imap.UID{1, 3, 4, 5}) {
		t.Errorf("UIDs after IDLE: %v, want [1 3 4 5]", uids)
	}
}

// IDLE without a selected mailbox just waits for DONE.
func TestIdleUnselected(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	c := ts.login(t, nil)
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	// deliver returns after the session's subscription has the news.
	ts.deliver(t, sample(t, "plain.eml"))
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
}

// UIDs are never reused (RFC 3501 §2.3.1.1), also across a restart, and
// UIDVALIDITY does not change.
func TestUIDsNeverReused(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendN(t, "INBOX", 3)
	rc := rawLogin(t, ts.addr)
	u := rc.ok("SELECT INBOX")
	uv := respNum(u, `UIDVALIDITY (\d+)`)
	rc.ok(`STORE 3 +FLAGS.SILENT (\Deleted)`)
	rc.ok("EXPUNGE")
	if n := respNum(rc.ok("STATUS INBOX (UIDNEXT)"), `UIDNEXT (\d+)`); n != 4 {
		t.Errorf("UIDNEXT after expunging the last message: %d, want 4", n)
	}
	_, st := rc.appendLit("INBOX", "", sample(t, "plain.eml"))
	if want := fmt.Sprintf("OK [APPENDUID %d 4]", uv); !strings.HasPrefix(st, want) {
		t.Errorf("APPEND after expunging UID 3: %q, want %s", st, want)
	}

	// Expunge the new last one, restart, deliver: UID 5.
	rc.ok(`UID STORE 4 +FLAGS.SILENT (\Deleted)`)
	rc.ok("UID EXPUNGE 4")
	ts.restart()
	ts.deliver(t, sample(t, "plain.eml"))
	rc = rawLogin(t, ts.addr)
	u = rc.ok("SELECT INBOX")
	if got := respNum(u, `UIDVALIDITY (\d+)`); got != uv {
		t.Errorf("UIDVALIDITY after restart %d, want %d", got, uv)
	}
	if got := searchLine(t, rc, "UID SEARCH ALL"); got != "1 2 5" {
		t.Errorf("UIDs after expunges, restart and a delivery: %q, want 1 2 5", got)
	}
	if n := respNum(u, `UIDNEXT (\d+)`); n != 6 {
		t.Errorf("UIDNEXT %d, want 6", n)
	}
}

// fillMailbox writes n messages into user's INBOX: body(i) gives the body
// index of message i, bodies[k] its body. Distinct bodies are appended one
// by one; a mailbox of one body repeated is made by appending it once and
// copying what is there until there are n, which shares the one blob and
// goes in transactions of thousands, as a bulk COPY does.
func fillMailbox(tb testing.TB, ts *testServer, n int, bodies [][]byte, body func(i int) int) {
	tb.Helper()
	date := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	if len(bodies) > 1 {
		for i := range n {
			if _, _, err := ts.boxes.Append(testUser, "INBOX", bytes.NewReader(bodies[body(i)]), date.Add(time.Duration(i)*time.Second), nil); err != nil {
				tb.Fatalf("Append %d: %v", i, err)
			}
		}
		return
	}
	if _, _, err := ts.boxes.Append(testUser, "INBOX", bytes.NewReader(bodies[0]), date, nil); err != nil {
		tb.Fatalf("Append: %v", err)
	}
	for have := 1; have < n; {
		mb, err := ts.boxes.GetMailbox(testUser, "INBOX")
		if err != nil {
			tb.Fatal(err)
		}
		uids, err := ts.boxes.UIDs(mb.ID)
		if err != nil {
			tb.Fatal(err)
		}
		uids = uids[:min(len(uids), n-have)]
		res, err := ts.boxes.Copy(testUser, "INBOX", "INBOX", uids, false, nil)
		if err != nil {
			tb.Fatalf("Copy at %d: %v", have, err)
		}
		have += len(res.DstUIDs)
	}
}

// Issue 4: a mailbox of 100,000 messages still opens fast.
func TestLargeMailbox(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000 messages; skipped with -short")
	}
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	start := time.Now()
	const n = 100000
	fillMailbox(t, ts, n, [][]byte{sample(t, "plain.eml")}, func(int) int { return 0 })
	t.Logf("filled %d messages in %v", n, time.Since(start))

	c := ts.login(t, nil)
	start = time.Now()
	data, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	took := time.Since(start)
	t.Logf("SELECT of %d messages: %v", n, took)
	if data.NumMessages != n || data.UIDNext != n+1 {
		t.Errorf("SELECT: EXISTS %d UIDNEXT %d, want %d and %d", data.NumMessages, data.UIDNext, n, n+1)
	}
	if took > 10*time.Second {
		t.Errorf("SELECT of %d messages took %v", n, took)
	}
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true, NumUnseen: true}).Wait()
	if err != nil || *st.NumMessages != n || *st.NumUnseen != n {
		t.Errorf("STATUS: %+v %v", st, err)
	}
	// The ends of the sequence map are right.
	msgs, err := c.Fetch(imap.SeqSet{{Start: n - 1, Stop: 0}}, &imap.FetchOptions{UID: true, RFC822Size: true}).Collect()
	if err != nil || len(msgs) != 2 || msgs[0].UID != n-1 || msgs[1].UID != n {
		t.Errorf("FETCH %d:*: %d messages, %v", n-1, len(msgs), err)
	}
	// A delivery to the big mailbox reaches the selected session.
	ts.deliver(t, sample(t, "plain.eml"))
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	if got := c.Mailbox().NumMessages; got != n+1 {
		t.Errorf("after a delivery: %d messages, want %d", got, n+1)
	}

	// Commands on every message at once ("mark all read", "select all and
	// move"): more records than one database transaction can hold.
	all := imap.SeqSet{{Start: 1, Stop: 0}}
	start = time.Now()
	if err := c.Store(all, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
		t.Fatalf("STORE 1:* +FLAGS.SILENT (\\Seen): %v", err)
	}
	t.Logf("STORE on %d messages: %v", n+1, time.Since(start))
	if st, err := c.Status("INBOX", &imap.StatusOptions{NumUnseen: true}).Wait(); err != nil || *st.NumUnseen != 0 {
		t.Errorf("STATUS after STORE 1:*: %+v %v", st, err)
	}
	start = time.Now()
	cd, err := c.Copy(all, "Archive").Wait()
	if err != nil {
		t.Fatalf("COPY 1:* Archive: %v", err)
	}
	t.Logf("COPY of %d messages: %v", n+1, time.Since(start))
	if uids, ok := cd.DestUIDs.Nums(); !ok || len(uids) != n+1 {
		t.Errorf("COPYUID names %d messages, want %d", len(uids), n+1)
	}
	for name, want := range map[string]uint32{"INBOX": n + 1, "Archive": n + 1} {
		if st, err := c.Status(name, &imap.StatusOptions{NumMessages: true, NumUnseen: true}).Wait(); err != nil || *st.NumMessages != want || *st.NumUnseen != 0 {
			t.Errorf("STATUS %s: %+v %v, want %d messages, all seen", name, st, err, want)
		}
	}
	start = time.Now()
	if _, err := c.Select("Archive", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Move(all, "Trash").Wait(); err != nil {
		t.Fatalf("MOVE 1:* Trash: %v", err)
	}
	if got := c.Mailbox().NumMessages; got != 0 {
		t.Errorf("after MOVE 1:*: %d messages left in the view, want 0", got)
	}
	t.Logf("MOVE of %d messages: %v", n+1, time.Since(start))
	for name, want := range map[string]uint32{"Archive": 0, "Trash": n + 1} {
		if st, err := c.Status(name, &imap.StatusOptions{NumMessages: true}).Wait(); err != nil || *st.NumMessages != want {
			t.Errorf("STATUS %s: %+v %v, want %d messages", name, st, err, want)
		}
	}
}
