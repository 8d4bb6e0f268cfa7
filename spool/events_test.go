package spool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/relaymail/relay/spool"
)

// eventLine sums an event up as "KIND rcpt status" for comparisons.
func eventLine(ev spool.Event) string {
	return strings.TrimSpace(fmt.Sprintf("%s %s %s", ev.Event, ev.Rcpt, ev.Status))
}

func (e *env) history(tb testing.TB, id string) []string {
	tb.Helper()
	evs, err := e.s.History(id)
	if err != nil {
		tb.Fatalf("History(%s): %v", id, err)
	}
	var out []string
	for _, ev := range evs {
		if ev.ID != id {
			tb.Errorf("History(%s) holds an event of %s", id, ev.ID)
		}
		out = append(out, eventLine(ev))
	}
	return out
}

func (e *env) tail(tb testing.TB, n int) []spool.Event {
	tb.Helper()
	var out []spool.Event
	err := e.s.Tail(context.Background(), n, false, func(ev spool.Event) error {
		out = append(out, ev)
		return nil
	})
	if err != nil {
		tb.Fatalf("Tail(%d): %v", n, err)
	}
	return out
}

// TestEventsFromStateChanges: every change of a recipient's state and of the
// hold flag is logged by the transaction that makes it, with the fields an
// operator needs, and nothing else is.
func TestEventsFromStateChanges(t *testing.T) {
	e := newEnv(t)
	m := e.enqueue(t, []byte("Subject: x\r\n\r\nbody\r\n"), rcpt("a@example.net"), rcpt("b@example.net"), rcpt("c@localhost"))
	e.clock.Advance(1500 * time.Millisecond)
	next := t0.Add(time.Hour)
	e.update(t, m.ID, func(m *spool.Message) {
		m.Rcpts[0].Attempts++
		m.Rcpts[0].Reply, m.Rcpts[0].NextAttempt, m.Rcpts[0].RemoteMTA = spool.NewReply(451, "4.4.1", "try later"), next, "mx.example.net"
		m.Rcpts[1].Attempts++
		m.Rcpts[1].State, m.Rcpts[1].Reply, m.Rcpts[1].RemoteMTA = spool.Failed, spool.NewReply(550, "5.1.1", "no such user"), "mx.example.net"
		m.Rcpts[2].Attempts++
		m.Rcpts[2].State = spool.Delivered
	})
	// No state change, no event.
	e.update(t, m.ID, func(m *spool.Message) { m.Rcpts[0].DelayNotified = true })
	if err := e.s.Hold(m.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.s.Hold(m.ID); err != nil { // already held: nothing happens
		t.Fatal(err)
	}
	if err := e.s.Release(m.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.s.Record(spool.Event{Event: spool.EventAttempt, ID: m.ID, Rcpt: "a@example.net", Attempt: 2}); err != nil {
		t.Fatal(err)
	}
	e.update(t, m.ID, func(m *spool.Message) {
		m.Rcpts[0].Attempts++
		m.Rcpts[0].State, m.Rcpts[0].Reply, m.Rcpts[0].RemoteMTA = spool.Delivered, spool.Reply{}, "mx2.example.net"
	})

	want := []string{
		"accepted",
		"deferred a@example.net 451 4.4.1 try later",
		"bounced b@example.net 550 5.1.1 no such user",
		"delivered c@localhost 2.0.0",
		"held",
		"released",
		"attempt a@example.net",
		"delivered a@example.net 2.0.0",
	}
	if got := e.history(t, m.ID); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("history:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	evs := e.tail(t, 100)
	if len(evs) != len(want) {
		t.Fatalf("Tail(100) = %d events, want %d", len(evs), len(want))
	}
	acc, def, bounced, local, remote := evs[0], evs[1], evs[2], evs[3], evs[7]
	if acc.From != "sender@example.org" || acc.Size != m.Size || acc.Client != "192.0.2.7" ||
		strings.Join(acc.Rcpts, ",") != "a@example.net,b@example.net,c@localhost" || !acc.Time.Equal(t0) {
		t.Errorf("accepted event: %+v", acc)
	}
	if def.Relay != "mx.example.net" || def.Attempt != 1 || !def.Next.Equal(next) || def.Delay != 1.5 {
		t.Errorf("deferred event: %+v (want relay, attempt 1, next %v, delay 1.5)", def, next)
	}
	if bounced.Relay != "mx.example.net" || bounced.Attempt != 1 {
		t.Errorf("bounced event: %+v", bounced)
	}
	if local.Relay != "local" {
		t.Errorf("local delivery event: relay %q, want local", local.Relay)
	}
	if remote.Relay != "mx2.example.net" || remote.Attempt != 2 {
		t.Errorf("remote delivery event: %+v", remote)
	}
	if !evs[4].Operator || !evs[5].Operator {
		t.Errorf("hold and release are not marked as the operator's: %+v %+v", evs[4], evs[5])
	}
	// The message is gone (every recipient final); its history stays.
	e.assertGone(t, m.ID)
	if got := e.history(t, m.ID); len(got) != len(want) {
		t.Errorf("history after the message left: %d events, want %d", len(got), len(want))
	}
}

// TestEventsDeleteAndNotice: a delete is logged; a notice queued inside an
// Update is logged (accepted) with that Update, and not at all when the
// Update fails.
func TestEventsDeleteAndNotice(t *testing.T) {
	e := newEnv(t)
	m := e.enqueue(t, []byte("x"), rcpt("a@example.net"))
	boom := errors.New("boom")
	notice := &spool.Message{ID: e.s.NewID(), Rcpts: []spool.Recipient{rcpt("sender@example.org")}}
	err := e.s.Update(m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
		m.Rcpts[0].State = spool.Failed
		n, err := e.s.Notice(notice, []byte("bounce"))
		if err != nil {
			return spool.Effects{}, err
		}
		return spool.Effects{Notices: []spool.Notice{n}}, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v", err)
	}
	if got := e.history(t, notice.ID); len(got) != 0 {
		t.Errorf("rolled-back notice logged: %q", got)
	}
	if got := e.history(t, m.ID); strings.Join(got, ",") != "accepted" {
		t.Errorf("rolled-back bounce logged: %q", got)
	}
	notice = &spool.Message{ID: e.s.NewID(), Rcpts: []spool.Recipient{rcpt("sender@example.org")}}
	err = e.s.Update(m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
		m.Rcpts[0].State, m.Rcpts[0].Reply = spool.Failed, spool.NewReply(550, "5.1.1", "no")
		n, err := e.s.Notice(notice, []byte("bounce"))
		return spool.Effects{Notices: []spool.Notice{n}}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.history(t, notice.ID); strings.Join(got, ",") != "accepted" {
		t.Errorf("notice history = %q, want accepted", got)
	}
	if err := e.s.Delete(notice.ID); err != nil {
		t.Fatal(err)
	}
	if got := e.history(t, notice.ID); strings.Join(got, ",") != "accepted,deleted" {
		t.Errorf("deleted notice history = %q, want accepted,deleted", got)
	}
	if err := e.s.Delete(notice.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
	if got := e.history(t, notice.ID); len(got) != 2 {
		t.Errorf("a failed delete was logged: %q", got)
	}
}

// TestTailAfterReopen: the log is on disk: after a restart, Tail gives the
// last n events in order, and every event expires after EventRetention.
func TestTailAfterReopen(t *testing.T) {
	e := newEnv(t)
	var ids []string
	for range 5 {
		ids = append(ids, e.enqueue(t, []byte("x"), rcpt("a@example.net")).ID)
		e.clock.Advance(time.Second)
	}
	e.reopen(t)
	evs := e.tail(t, 3)
	if len(evs) != 3 {
		t.Fatalf("Tail(3) after reopen = %d events", len(evs))
	}
	for i, ev := range evs {
		if ev.ID != ids[2+i] || ev.Event != spool.EventAccepted {
			t.Errorf("event %d = %s %s, want accepted %s", i, ev.Event, ev.ID, ids[2+i])
		}
	}
	if n := len(e.tail(t, 1000)); n != 5 {
		t.Errorf("Tail(1000) = %d events, want all 5", n)
	}
	if n := len(e.tail(t, 0)); n != 0 {
		t.Errorf("Tail(0) = %d events", n)
	}
	err := e.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("ev/")})
		defer it.Close()
		n := 0
		for it.Rewind(); it.Valid(); it.Next() {
			n++
			exp := time.Unix(int64(it.Item().ExpiresAt()), 0)
			if d := time.Until(exp); d < spool.EventRetention-time.Minute || d > spool.EventRetention {
				t.Errorf("key %q expires in %v, want %v", it.Item().Key(), d, spool.EventRetention)
			}
		}
		if n != 10 {
			t.Errorf("%d event-log keys, want 10 (event and history key per event)", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTailFollow: a follower sees the replay and then each new event once,
// also one that commits while the replay runs; it stops with its context.
func TestTailFollow(t *testing.T) {
	e := newEnv(t)
	first := e.enqueue(t, []byte("x"), rcpt("a@example.net"))
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan spool.Event, 100)
	done := make(chan error, 1)
	go func() {
		done <- e.s.Tail(ctx, 5, true, func(ev spool.Event) error {
			got <- ev
			return nil
		})
	}()
	next := func() spool.Event {
		t.Helper()
		select {
		case ev := <-got:
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no event within 5s")
			return spool.Event{}
		}
	}
	if ev := next(); ev.ID != first.ID {
		t.Fatalf("replayed %+v, want the accepted event of %s", ev, first.ID)
	}
	second := e.enqueue(t, []byte("y"), rcpt("b@example.net"))
	if ev := next(); ev.ID != second.ID || ev.Event != spool.EventAccepted {
		t.Errorf("followed %+v, want the accepted event of %s", ev, second.ID)
	}
	if err := e.s.Hold(second.ID); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Event != spool.EventHeld {
		t.Errorf("followed %+v, want held", ev)
	}
	select {
	case ev := <-got:
		t.Errorf("extra event %+v", ev)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Tail after cancel = %v", err)
	}
}

// TestTailFollowSlowReader: a follower that does not read holds back no
// committer (the log is read back from the store, not pushed to it), and
// once it reads again it gets every event once, in order, also past one
// page of the log and all in one instant of the fake clock.
func TestTailFollowSlowReader(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	done := make(chan error, 1)
	started := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	var got []int
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		done <- e.s.Tail(ctx, 0, true, func(ev spool.Event) error {
			once.Do(func() { close(started) })
			<-release
			mu.Lock()
			got = append(got, ev.Attempt)
			mu.Unlock()
			return nil
		})
	}()
	// Tail follows from the moment it looked, which the test cannot see:
	// record events until the follower has one.
	first := 0
	deadline := time.Now().Add(10 * time.Second)
	for waiting := true; waiting; {
		if time.Now().After(deadline) {
			t.Fatal("the follower got no event in 10 s")
		}
		first--
		if err := e.s.Record(spool.Event{Event: spool.EventAttempt, ID: "X", Attempt: first}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-started:
			waiting = false
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The follower is stuck in fn; the committers are not.
	const n = 2500
	for i := range n {
		if err := e.s.Record(spool.Event{Event: spool.EventAttempt, ID: "X", Attempt: i + 1}); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	deadline = time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		last := 0
		if len(got) > 0 {
			last = got[len(got)-1]
		}
		mu.Unlock()
		if last == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the follower got up to attempt %d of %d within 20 s", last, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	var tail []int
	for _, a := range got {
		if a > 0 {
			tail = append(tail, a)
		}
	}
	for i, a := range tail {
		if a != i+1 {
			t.Fatalf("event %d of the follow is attempt %d: events lost, repeated or out of order", i, a)
		}
	}
	if len(tail) != n {
		t.Errorf("the follower got %d events, want %d", len(tail), n)
	}
}

// TestMailLogAndHooks: each published event is one mail-log line and one
// hook call, after its commit.
func TestMailLogAndHooks(t *testing.T) {
	e := newEnv(t)
	var buf bytes.Buffer
	e.s.SetMailLog(slog.New(slog.NewTextHandler(&buf, nil)))
	var seen []string
	e.s.OnEvent(func(ev spool.Event) { seen = append(seen, ev.Event) })
	m := e.enqueue(t, []byte("x"), rcpt("a@example.net"))
	e.update(t, m.ID, func(m *spool.Message) { m.Rcpts[0].State = spool.Delivered })
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "msg=accepted id="+m.ID+" from=sender@example.org") ||
		!strings.Contains(lines[1], "msg=delivered id="+m.ID+" rcpt=a@example.net") || !strings.Contains(lines[1], "relay=local") {
		t.Errorf("mail log:\n%s", buf.String())
	}
	if strings.Join(seen, ",") != "accepted,delivered" {
		t.Errorf("hooks saw %q", seen)
	}
}

// TestFlushAll: every pending recipient of every message becomes due now,
// across more than one page of IDs; held messages stay held.
func TestFlushAll(t *testing.T) {
	e := newEnv(t)
	later := t0.Add(time.Hour)
	var held string
	for i := range 1205 {
		m := e.enqueue(t, []byte("x"), rcptAt("a@example.net", later))
		if i == 7 {
			held = m.ID
			if err := e.s.Hold(held); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := e.due(t, t0, 2000); len(got) != 0 {
		t.Fatalf("%d due before the flush", len(got))
	}
	n, err := e.s.FlushAll()
	if err != nil || n != 1205 {
		t.Fatalf("FlushAll = %d, %v; want 1205", n, err)
	}
	due := e.due(t, t0, 2000)
	if len(due) != 1204 || slices.Contains(due, held) {
		t.Errorf("%d due after the flush (held one among them: %v), want 1204 without the held one", len(due), slices.Contains(due, held))
	}
}

// TestClaimFindsEarlierWork: a claim starts where the last one found its
// first entry (the due index's front is tombstones of delivered messages),
// yet still finds every entry written since, however early its due time (a
// released message whose next attempt lies in the past).
func TestClaimFindsEarlierWork(t *testing.T) {
	e := newEnv(t)
	old := e.enqueue(t, []byte("x"), rcptAt("a@example.net", t0.Add(-time.Hour)))
	if err := e.s.Hold(old.ID); err != nil {
		t.Fatal(err)
	}
	a := e.enqueue(t, []byte("x"), rcptAt("b@example.net", t0))
	b := e.enqueue(t, []byte("x"), rcptAt("c@example.net", t0.Add(time.Minute)))
	if ids := e.due(t, t0, 10); !slices.Equal(ids, []string{a.ID}) {
		t.Fatalf("due at t0 = %v, want %v", ids, a.ID)
	}
	e.update(t, a.ID, func(m *spool.Message) { m.Rcpts[0].State = spool.Delivered })
	if ids := e.due(t, t0.Add(time.Minute), 10); !slices.Equal(ids, []string{b.ID}) {
		t.Fatalf("after the delivery due = %v, want %v", ids, b.ID)
	}
	if err := e.s.Release(old.ID); err != nil {
		t.Fatal(err)
	}
	if ids := e.due(t, t0.Add(time.Minute), 10); !slices.Equal(ids, []string{old.ID, b.ID}) {
		t.Errorf("after the release due = %v, want %v", ids, []string{old.ID, b.ID})
	}
}
