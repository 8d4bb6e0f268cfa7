// Package storetest is the conformance suite of the storage seam: the same
// tests, run against every engine (internal/store/badger,
// internal/store/postgres), check what spool and mailbox rely on — the queue,
// claims and leases, atomic outcomes with their filings, notices and events,
// the event log, accounts, mailboxes, messages and notifications — so that
// nothing above the seam can tell the engines apart.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/store"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// Engine is what an engine implements.
type Engine interface {
	spool.Backend
	mailbox.Backend
}

// Opener returns a fresh, empty store that is closed when the test ends.
type Opener func(t *testing.T) Engine

// Options say what an engine does beyond what every engine does.
type Options struct {
	// LeasesExpire: a lease not renewed runs out at its end, and the
	// message can be claimed again (several nodes, one of which may die).
	// Without it a lease lasts until it is given back (one process).
	LeasesExpire bool
}

// Run runs the whole suite against the engine that open makes.
func Run(t *testing.T, open Opener, o Options) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, Engine)
	}{
		{"EnqueueGet", testEnqueueGet},
		{"LargeBody", testLargeBody},
		{"Page", testPage},
		{"Claim", testClaim},
		{"LeaseFencing", testLeaseFencing},
		{"LeaseExpiry", func(t *testing.T, e Engine) {
			if !o.LeasesExpire {
				t.Skip("this engine's leases last until given back")
			}
			testLeaseExpiry(t, e)
		}},
		{"UpdateOutcome", testUpdateOutcome},
		{"UpdateOperator", testUpdateOperator},
		{"LocalDeliveryAtomic", testLocalDeliveryAtomic},
		{"FilingNoAccount", testFilingNoAccount},
		{"Events", testEvents},
		{"QueueChanged", testQueueChanged},
		{"Accounts", testAccounts},
		{"Mailboxes", testMailboxes},
		{"Subscriptions", testSubscriptions},
		{"Messages", testMessages},
		{"HeaderCopy", testHeaderCopy},
		{"CopyMove", testCopyMove},
		{"UIDsNeverReused", testUIDsNeverReused},
		{"ConcurrentDeliveries", testConcurrentDeliveries},
		{"Notifications", testNotifications},
		{"Settings", testSettings},
		{"SyncBeforeAck", testSyncBeforeAck},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

var ctx = context.Background()

// base is a fixed time the tests count from; engines store times to the
// microsecond at least.
var base = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

var idSeq struct {
	sync.Mutex
	n int
}

// newID makes a queue ID that sorts after the ones made before.
func newID() string {
	idSeq.Lock()
	defer idSeq.Unlock()
	idSeq.n++
	return fmt.Sprintf("01TEST%012d", idSeq.n)
}

// message is a queued message to rcpts, due at base.
func message(rcpts ...string) *spool.Message {
	m := &spool.Message{ID: newID(), Arrived: base, From: "alice@example.org", ClientIP: "192.0.2.1", Helo: "client.example",
		Params: spool.MailParams{Body: "8BITMIME", EnvID: "env-1"}}
	for _, r := range rcpts {
		m.Rcpts = append(m.Rcpts, spool.Recipient{Address: r, State: spool.Pending, NextAttempt: base, Notify: []string{"FAILURE"}})
	}
	return m
}

func accepted(m *spool.Message) spool.Event {
	return spool.Event{Time: base, Event: spool.EventAccepted, ID: m.ID, From: m.From}
}

func enqueue(t *testing.T, e Engine, m *spool.Message, body string) {
	t.Helper()
	if err := e.Enqueue(ctx, m, strings.NewReader(body), accepted(m)); err != nil {
		t.Fatalf("enqueue %s: %v", m.ID, err)
	}
}

func body(t *testing.T, e Engine, id string) string {
	t.Helper()
	r, err := e.Body(ctx, id)
	if err != nil {
		t.Fatalf("body of %s: %v", id, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read body of %s: %v", id, err)
	}
	return string(b)
}

func testEnqueueGet(t *testing.T, e Engine) {
	m := message("bob@example.net", "carol@example.net")
	m.Params.SMTPUTF8 = true
	m.Rcpts[1].ORcpt = "rfc822;carol@example.net"
	const msg = "Subject: hi\r\n\r\nhello\r\n"
	enqueue(t, e, m, msg)
	got, err := e.Get(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.From != m.From || got.ClientIP != m.ClientIP || got.Helo != m.Helo || !got.Arrived.Equal(base) ||
		got.Params != m.Params || got.Size != int64(len(msg)) || len(got.Rcpts) != 2 {
		t.Fatalf("Get = %+v, want %+v with size %d", got, m, len(msg))
	}
	if r := got.Rcpts[1]; r.Address != "carol@example.net" || r.ORcpt != m.Rcpts[1].ORcpt || r.State != spool.Pending ||
		!r.NextAttempt.Equal(base) || !slices.Equal(r.Notify, []string{"FAILURE"}) {
		t.Errorf("recipient = %+v", r)
	}
	if b := body(t, e, m.ID); b != msg {
		t.Errorf("body = %q, want %q", b, msg)
	}
	if _, err := e.Get(ctx, "NOSUCH"); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("Get of an unknown ID: %v, want spool.ErrNotFound", err)
	}
	if _, err := e.Body(ctx, "NOSUCH"); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("Body of an unknown ID: %v, want spool.ErrNotFound", err)
	}
	if n, err := e.Count(ctx); err != nil || n != 1 {
		t.Errorf("Count = %d, %v; want 1", n, err)
	}
	if o, err := e.Oldest(ctx); err != nil || !o.Equal(base) {
		t.Errorf("Oldest = %v, %v; want %v", o, err, base)
	}
	if d, ok, err := e.NextDue(ctx); err != nil || !ok || !d.Equal(base) {
		t.Errorf("NextDue = %v, %v, %v; want %v", d, ok, err, base)
	}
}

// testLargeBody: a body of several chunks reads back whole.
func testLargeBody(t *testing.T, e Engine) {
	b := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16+7)
	m := message("bob@example.net")
	if err := e.Enqueue(ctx, m, bytes.NewReader(b), accepted(m)); err != nil {
		t.Fatal(err)
	}
	if got := body(t, e, m.ID); got != string(b) {
		t.Fatalf("a %d-byte body read back as %d bytes", len(b), len(got))
	}
	if m.Size != int64(len(b)) {
		t.Errorf("Enqueue set Size %d, want %d", m.Size, len(b))
	}
}

// testPage: paging lists every message once, in ID order.
func testPage(t *testing.T, e Engine) {
	var ids []string
	for range 25 {
		m := message("bob@example.net")
		enqueue(t, e, m, "x\r\n")
		ids = append(ids, m.ID)
	}
	var got []string
	after := ""
	for {
		page, err := e.Page(ctx, after, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 10 {
			t.Fatalf("a page of 10 holds %d", len(page))
		}
		for _, m := range page {
			got = append(got, m.ID)
			if len(m.Rcpts) != 1 {
				t.Errorf("%s listed with %d recipients", m.ID, len(m.Rcpts))
			}
		}
		after = page[len(page)-1].ID
	}
	if !slices.Equal(got, ids) {
		t.Errorf("pages list %v, want %v", got, ids)
	}
}

// testClaim: only due, unheld, unleased messages are claimed, earliest
// first, at most limit; a lease keeps a message from every other claim
// until it is released or runs out.
func testClaim(t *testing.T, e Engine) {
	early, late, held, future := message("a@example.net"), message("b@example.net"), message("c@example.net"), message("d@example.net")
	early.Rcpts[0].NextAttempt = base.Add(-time.Minute)
	held.Hold = true
	future.Rcpts[0].NextAttempt = base.Add(time.Hour)
	for _, m := range []*spool.Message{late, held, future, early} {
		enqueue(t, e, m, "x\r\n")
	}
	ls, err := e.Claim(ctx, base, 1, time.Minute)
	if err != nil || len(ls) != 1 || ls[0].ID != early.ID {
		t.Fatalf("Claim(1) = %+v, %v; want the earliest, %s", ls, err, early.ID)
	}
	ls2, err := e.Claim(ctx, base, 10, time.Minute)
	if err != nil || len(ls2) != 1 || ls2[0].ID != late.ID {
		t.Fatalf("second Claim = %+v, %v; want only %s (the rest is leased, held or not due)", ls2, err, late.ID)
	}
	if ls, _ := e.Claim(ctx, base, 10, time.Minute); len(ls) != 0 {
		t.Fatalf("third Claim = %+v, want nothing", ls)
	}
	if err := e.Release(ctx, ls2[0]); err != nil {
		t.Fatal(err)
	}
	again, err := e.Claim(ctx, base, 10, time.Minute)
	if err != nil || len(again) != 1 || again[0].ID != late.ID || again[0].Epoch <= ls2[0].Epoch {
		t.Fatalf("Claim after Release = %+v, %v; want %s with a higher epoch than %d", again, err, late.ID, ls2[0].Epoch)
	}
}

// testLeaseExpiry: a lease that ran out is free again, and the node that
// held it can no longer write with it.
func testLeaseExpiry(t *testing.T, e Engine) {
	early, late := message("a@example.net"), message("b@example.net")
	for _, m := range []*spool.Message{early, late} {
		enqueue(t, e, m, "x\r\n")
	}
	old, err := e.Claim(ctx, base, 10, time.Minute)
	if err != nil || len(old) != 2 {
		t.Fatalf("Claim = %+v, %v", old, err)
	}
	expired, err := e.Claim(ctx, base.Add(2*time.Minute), 10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	gotIDs := []string{}
	for _, l := range expired {
		gotIDs = append(gotIDs, l.ID)
	}
	slices.Sort(gotIDs)
	want := []string{early.ID, late.ID}
	slices.Sort(want)
	if !slices.Equal(gotIDs, want) {
		t.Errorf("Claim after the leases ran out = %v, want %v", gotIDs, want)
	}
	err = e.Update(ctx, early.ID, &old[0], func(m *spool.Message) (spool.Effects, error) {
		m.Rcpts[0].State = spool.Delivered
		return spool.Effects{}, nil
	})
	if !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("Update with a lease that ran out and was taken over: %v, want store.ErrLeaseLost", err)
	}
}

// testLeaseFencing: once another claim took a message over, a write with
// the old lease is refused and changes nothing.
func testLeaseFencing(t *testing.T, e Engine) {
	m := message("bob@example.net")
	enqueue(t, e, m, "x\r\n")
	old, err := e.Claim(ctx, base, 1, time.Minute)
	if err != nil || len(old) != 1 {
		t.Fatalf("Claim: %+v, %v", old, err)
	}
	// The lease ends (given back here; on a shared store it may also run
	// out) and another claimer takes the message.
	if err := e.Release(ctx, old[0]); err != nil {
		t.Fatal(err)
	}
	cur, err := e.Claim(ctx, base, 1, time.Minute)
	if err != nil || len(cur) != 1 || cur[0].Epoch <= old[0].Epoch {
		t.Fatalf("second Claim: %+v, %v", cur, err)
	}
	err = e.Update(ctx, m.ID, &old[0], func(m *spool.Message) (spool.Effects, error) {
		m.Rcpts[0].State = spool.Delivered
		return spool.Effects{}, nil
	})
	if !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("Update with a lease taken over: %v, want store.ErrLeaseLost", err)
	}
	if err := e.Renew(ctx, old[0], time.Minute); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("Renew of a lease taken over: %v, want store.ErrLeaseLost", err)
	}
	if got, err := e.Get(ctx, m.ID); err != nil || got.Rcpts[0].State != spool.Pending {
		t.Fatalf("after the refused write: %+v, %v; want the recipient still pending", got, err)
	}
	if err := e.Renew(ctx, cur[0], time.Minute); err != nil {
		t.Errorf("Renew of the current lease: %v", err)
	}
	err = e.Update(ctx, m.ID, &cur[0], func(m *spool.Message) (spool.Effects, error) {
		m.Rcpts[0].State = spool.Delivered
		return spool.Effects{}, nil
	})
	if err != nil {
		t.Fatalf("Update with the current lease: %v", err)
	}
	if _, err := e.Get(ctx, m.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("a message with every recipient final is still there: %v", err)
	}
}

// testUpdateOutcome: a deferral is stored with the next attempt, a bounce
// queues its notice and events in the same commit, and the message goes
// once every recipient is final.
func testUpdateOutcome(t *testing.T, e Engine) {
	m := message("bob@example.net", "carol@example.net")
	enqueue(t, e, m, "Subject: x\r\n\r\nbody\r\n")
	next := base.Add(5 * time.Minute)
	notice := message("alice@example.org")
	notice.From = ""
	err := e.Update(ctx, m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
		m.Rcpts[0].Attempts++
		m.Rcpts[0].NextAttempt = next
		m.Rcpts[0].RemoteMTA = "mx.example.net"
		m.Rcpts[1].Attempts++
		m.Rcpts[1].State = spool.Failed
		return spool.Effects{
			Notices: []spool.Notice{{Message: notice, Body: []byte("Subject: failure\r\n\r\nsorry\r\n")}},
			Events: []spool.Event{
				{Time: base, Event: spool.EventDeferred, ID: m.ID, Rcpt: "bob@example.net"},
				{Time: base, Event: spool.EventBounced, ID: m.ID, Rcpt: "carol@example.net"},
			},
		}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.Get(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r := got.Rcpts[0]; r.State != spool.Pending || r.Attempts != 1 || !r.NextAttempt.Equal(next) || r.RemoteMTA != "mx.example.net" {
		t.Errorf("deferred recipient = %+v", r)
	}
	if r := got.Rcpts[1]; r.State != spool.Failed || r.Attempts != 1 {
		t.Errorf("bounced recipient = %+v", r)
	}
	if b := body(t, e, notice.ID); b != "Subject: failure\r\n\r\nsorry\r\n" {
		t.Errorf("notice body = %q", b)
	}
	if d, ok, _ := e.NextDue(ctx); !ok || !d.Equal(base) {
		t.Errorf("NextDue = %v, want the notice's %v", d, base)
	}
	hist, err := e.History(ctx, m.ID)
	if err != nil || len(hist) != 3 {
		t.Fatalf("History = %+v, %v; want accepted, deferred, bounced", hist, err)
	}
	if hist[1].Event != spool.EventDeferred || hist[2].Rcpt != "carol@example.net" {
		t.Errorf("History = %+v", hist)
	}
	// The last pending recipient delivered: the message goes.
	err = e.Update(ctx, m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
		m.Rcpts[0].State = spool.Delivered
		return spool.Effects{}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Get(ctx, m.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("finished message still queued: %v", err)
	}
	if _, err := e.Body(ctx, m.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("finished message's body still there: %v", err)
	}
	if err := e.Update(ctx, m.ID, nil, func(*spool.Message) (spool.Effects, error) { return spool.Effects{}, nil }); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("Update of a finished message: %v, want spool.ErrNotFound", err)
	}
}

// testUpdateOperator: hold takes a message out of the claims, release puts
// it back, a failing fn changes nothing, and Delete removes it with its
// event.
func testUpdateOperator(t *testing.T, e Engine) {
	m := message("bob@example.net")
	enqueue(t, e, m, "x\r\n")
	set := func(hold bool) {
		t.Helper()
		if err := e.Update(ctx, m.ID, nil, func(m *spool.Message) (spool.Effects, error) { m.Hold = hold; return spool.Effects{}, nil }); err != nil {
			t.Fatal(err)
		}
	}
	set(true)
	if ls, _ := e.Claim(ctx, base, 10, time.Minute); len(ls) != 0 {
		t.Errorf("a held message was claimed: %+v", ls)
	}
	if _, ok, _ := e.NextDue(ctx); ok {
		t.Errorf("a held message is due")
	}
	set(false)
	if ls, _ := e.Claim(ctx, base, 10, time.Minute); len(ls) != 1 {
		t.Errorf("a released message was not claimed: %+v", ls)
	}
	boom := errors.New("boom")
	err := e.Update(ctx, m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
		m.Rcpts[0].State = spool.Failed
		return spool.Effects{}, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update with a failing fn: %v, want its error", err)
	}
	if got, _ := e.Get(ctx, m.ID); got == nil || got.Rcpts[0].State != spool.Pending {
		t.Errorf("a failed Update changed the message: %+v", got)
	}
	if err := e.Delete(ctx, m.ID, spool.Event{Time: base, Event: spool.EventDeleted, ID: m.ID, Operator: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Get(ctx, m.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("deleted message still there: %v", err)
	}
	if err := e.Delete(ctx, m.ID, spool.Event{Time: base, Event: spool.EventDeleted, ID: m.ID}); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("second Delete: %v, want spool.ErrNotFound", err)
	}
	hist, _ := e.History(ctx, m.ID)
	if len(hist) == 0 || hist[len(hist)-1].Event != spool.EventDeleted {
		t.Errorf("History after Delete = %+v", hist)
	}
}

func addAccount(t *testing.T, e Engine, addr string) {
	t.Helper()
	acc := mailbox.Account{Address: addr, Hash: []byte("hash"), Created: base}
	boxes := []mailbox.NewMailbox{{Name: "INBOX", Subscribed: true}, {Name: "Trash", SpecialUse: `\Trash`, Subscribed: true}}
	if err := e.CreateAccount(ctx, acc, boxes); err != nil {
		t.Fatalf("create %s: %v", addr, err)
	}
}

func inbox(t *testing.T, e Engine, user string) (*mailbox.Mailbox, []mailbox.Message) {
	t.Helper()
	mb, err := e.Mailbox(ctx, user, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	uids, err := e.UIDs(ctx, mb.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := e.Messages(ctx, mb.ID, uids)
	if err != nil {
		t.Fatal(err)
	}
	return mb, ms
}

func readMessage(t *testing.T, e Engine, m mailbox.Message) string {
	t.Helper()
	r := e.Open(ctx, m)
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// testLocalDeliveryAtomic: a local delivery files the message and records
// the recipient's state in one commit. A fault after the filing (here: a
// notice whose ID is taken, which fails the same transaction later) leaves
// neither the mailbox copy nor the new state.
func testLocalDeliveryAtomic(t *testing.T, e Engine) {
	addAccount(t, e, "bob@example.org")
	addAccount(t, e, "carol@example.org")
	const msg = "Subject: local\r\n\r\nfor you\r\n"
	m := message("bob@example.org", "carol@example.org")
	enqueue(t, e, m, msg)
	taken := message("x@example.net")
	enqueue(t, e, taken, "x\r\n")

	deliver := func(notices []spool.Notice) error {
		return e.Update(ctx, m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
			for i := range m.Rcpts {
				m.Rcpts[i].State = spool.Delivered
				m.Rcpts[i].Attempts++
			}
			return spool.Effects{File: &spool.Filing{Accounts: []string{"bob@example.org", "carol@example.org"}, Date: base},
				Notices: notices}, nil
		})
	}
	dup := &spool.Message{ID: taken.ID, Arrived: base, Rcpts: []spool.Recipient{{Address: "alice@example.org", State: spool.Pending}}}
	if err := deliver([]spool.Notice{{Message: dup, Body: []byte("x\r\n")}}); err == nil {
		t.Fatal("an Update whose notice ID is taken succeeded")
	}
	for _, u := range []string{"bob@example.org", "carol@example.org"} {
		if mb, ms := inbox(t, e, u); len(ms) != 0 || mb.Messages != 0 || mb.UIDNext != 1 {
			t.Errorf("after the failed delivery %s's INBOX holds %d message(s), counts %d, UIDNEXT %d; want it untouched",
				u, len(ms), mb.Messages, mb.UIDNext)
		}
	}
	if got, err := e.Get(ctx, m.ID); err != nil || got.Rcpts[0].State != spool.Pending || got.Rcpts[0].Attempts != 0 {
		t.Fatalf("after the failed delivery: %+v, %v; want both recipients pending with no attempt", got, err)
	}

	if err := deliver(nil); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"bob@example.org", "carol@example.org"} {
		mb, ms := inbox(t, e, u)
		if len(ms) != 1 || ms[0].UID != 1 || mb.UIDNext != 2 || mb.Messages != 1 || mb.Unseen != 1 || mb.Size != int64(len(msg)) {
			t.Fatalf("%s's INBOX after delivery: %+v, messages %+v", u, mb, ms)
		}
		if got := readMessage(t, e, ms[0]); got != msg {
			t.Errorf("%s's copy reads %q, want %q", u, got, msg)
		}
		if !ms[0].Date.Equal(base) {
			t.Errorf("%s's copy has date %v, want %v", u, ms[0].Date, base)
		}
		head, ok, err := e.Head(ctx, ms[0])
		if err != nil || !ok || string(head) != "Subject: local\r\n\r\n" {
			t.Errorf("stored header = %q, %v, %v", head, ok, err)
		}
	}
	if _, err := e.Get(ctx, m.ID); !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("delivered message still queued: %v", err)
	}
}

// testFilingNoAccount: a filing for an account that does not exist fails
// the whole update with spool.ErrNoAccount naming it.
func testFilingNoAccount(t *testing.T, e Engine) {
	addAccount(t, e, "bob@example.org")
	m := message("bob@example.org", "gone@example.org")
	enqueue(t, e, m, "x\r\n")
	err := e.Update(ctx, m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
		m.Rcpts[0].State, m.Rcpts[1].State = spool.Delivered, spool.Delivered
		return spool.Effects{File: &spool.Filing{Accounts: []string{"bob@example.org", "gone@example.org"}, Date: base}}, nil
	})
	var na *spool.NoAccountError
	if !errors.Is(err, spool.ErrNoAccount) || !errors.As(err, &na) || na.Account != "gone@example.org" {
		t.Fatalf("filing for a missing account: %v, want spool.ErrNoAccount for gone@example.org", err)
	}
	if _, ms := inbox(t, e, "bob@example.org"); len(ms) != 0 {
		t.Errorf("bob got %d message(s) from the refused filing", len(ms))
	}
}

// testEvents: the log keeps events in order with unique cursors; the newest
// n, those since a time, and a message's history.
func testEvents(t *testing.T, e Engine) {
	var ids []string
	for i := range 5 {
		m := message("bob@example.net")
		ev := accepted(m)
		ev.Time = base.Add(time.Duration(i) * time.Second)
		if err := e.Enqueue(ctx, m, strings.NewReader("x"), ev); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	if err := e.Record(ctx, spool.Event{Time: base.Add(10 * time.Second), Event: spool.EventAttempt, ID: ids[0], Rcpt: "bob@example.net", Attempt: 1, Relay: "mx"}); err != nil {
		t.Fatal(err)
	}
	last, err := e.LastEvents(ctx, 3)
	if err != nil || len(last) != 3 {
		t.Fatalf("LastEvents(3) = %+v, %v", last, err)
	}
	if last[0].ID != ids[3] || last[1].ID != ids[4] || last[2].Event != spool.EventAttempt || last[2].Relay != "mx" {
		t.Errorf("LastEvents(3) = %+v", last)
	}
	since, err := e.EventsSince(ctx, base.Add(2*time.Second), "", 100)
	if err != nil || len(since) != 4 || since[0].ID != ids[2] {
		t.Errorf("EventsSince(+2s) = %+v, %v; want 4 from %s", since, err, ids[2])
	}
	seen := map[string]bool{}
	for _, ev := range since {
		if ev.Cursor == "" || seen[ev.Cursor] {
			t.Errorf("event %+v has an empty or repeated cursor", ev)
		}
		seen[ev.Cursor] = true
	}
	hist, err := e.History(ctx, ids[0])
	if err != nil || len(hist) != 2 || hist[0].Event != spool.EventAccepted || hist[1].Event != spool.EventAttempt {
		t.Errorf("History = %+v, %v", hist, err)
	}
	if h, err := e.History(ctx, ids[0][:len(ids[0])-1]); err != nil || len(h) != 0 {
		t.Errorf("History of an ID prefix = %+v, %v; want nothing", h, err)
	}
}

// testQueueChanged: an enqueue wakes the claimers, and a record wakes the
// log's followers.
func testQueueChanged(t *testing.T, e Engine) {
	qc, ec := e.QueueChanged(), e.EventsChanged()
	m := message("bob@example.net")
	enqueue(t, e, m, "x")
	for name, ch := range map[string]<-chan struct{}{"QueueChanged": qc, "EventsChanged": ec} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not fire within 10 s of an enqueue", name)
		}
	}
}

func testAccounts(t *testing.T, e Engine) {
	addAccount(t, e, "bob@example.org")
	acc := mailbox.Account{Address: "bob@example.org", Hash: []byte("other"), Created: base}
	if err := e.CreateAccount(ctx, acc, nil); !errors.Is(err, mailbox.ErrUserExists) {
		t.Errorf("second CreateAccount: %v, want mailbox.ErrUserExists", err)
	}
	got, err := e.Account(ctx, "bob@example.org")
	if err != nil || string(got.Hash) != "hash" || !got.Created.Equal(base) {
		t.Fatalf("Account = %+v, %v", got, err)
	}
	if err := e.SetPasswordHash(ctx, "bob@example.org", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.Account(ctx, "bob@example.org"); string(got.Hash) != "new" {
		t.Errorf("hash after SetPasswordHash = %q", got.Hash)
	}
	for _, err := range []error{
		e.SetPasswordHash(ctx, "nobody@example.org", []byte("x")),
		e.DeleteAccount(ctx, "nobody@example.org", true),
	} {
		if !errors.Is(err, mailbox.ErrNoUser) {
			t.Errorf("operation on an unknown account: %v, want mailbox.ErrNoUser", err)
		}
	}
	if _, err := e.Account(ctx, "nobody@example.org"); !errors.Is(err, mailbox.ErrNoUser) {
		t.Errorf("Account of an unknown address: %v", err)
	}
	if _, _, err := e.Append(ctx, "bob@example.org", "INBOX", strings.NewReader("Subject: a\r\n\r\nb\r\n"), base, nil); err != nil {
		t.Fatal(err)
	}
	addAccount(t, e, "alice@example.org")
	users, err := e.Accounts(ctx)
	if err != nil || len(users) != 2 || users[0].Address != "alice@example.org" || users[1].Messages != 1 || users[1].Size == 0 {
		t.Errorf("Accounts = %+v, %v", users, err)
	}
	if err := e.DeleteAccount(ctx, "bob@example.org", false); !errors.Is(err, mailbox.ErrHasMail) {
		t.Errorf("DeleteAccount with mail, no force: %v, want mailbox.ErrHasMail", err)
	}
	if err := e.DeleteAccount(ctx, "bob@example.org", true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Mailbox(ctx, "bob@example.org", "INBOX"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("INBOX of a deleted account: %v", err)
	}
	// The address can be made again, from scratch.
	addAccount(t, e, "bob@example.org")
	if mb, ms := inbox(t, e, "bob@example.org"); len(ms) != 0 || mb.Messages != 0 {
		t.Errorf("a re-made account has %d messages", len(ms))
	}
}

func testMailboxes(t *testing.T, e Engine) {
	addAccount(t, e, "bob@example.org")
	if _, err := e.CreateMailbox(ctx, "nobody@example.org", mailbox.NewMailbox{Name: "X"}); !errors.Is(err, mailbox.ErrNoUser) {
		t.Errorf("CreateMailbox for an unknown account: %v", err)
	}
	a, err := e.CreateMailbox(ctx, "bob@example.org", mailbox.NewMailbox{Name: "Work"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateMailbox(ctx, "bob@example.org", mailbox.NewMailbox{Name: "Work"}); !errors.Is(err, mailbox.ErrMailboxExist) {
		t.Errorf("second CreateMailbox: %v", err)
	}
	if _, err := e.CreateMailbox(ctx, "bob@example.org", mailbox.NewMailbox{Name: "Work/2026"}); err != nil {
		t.Fatal(err)
	}
	inb, _ := inbox(t, e, "bob@example.org")
	if a.UIDValidity == inb.UIDValidity {
		t.Errorf("two mailboxes share UIDVALIDITY %d", a.UIDValidity)
	}
	if err := e.RenameMailbox(ctx, "bob@example.org", "Work", "Trash"); !errors.Is(err, mailbox.ErrMailboxExist) {
		t.Errorf("rename onto an existing name: %v", err)
	}
	if err := e.RenameMailbox(ctx, "bob@example.org", "Nope", "Other"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("rename of an unknown mailbox: %v", err)
	}
	if err := e.RenameMailbox(ctx, "bob@example.org", "Work", "Jobs"); err != nil {
		t.Fatal(err)
	}
	mbs, err := e.Mailboxes(ctx, "bob@example.org")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mb := range mbs {
		names = append(names, mb.Name)
	}
	if !slices.Equal(names, []string{"INBOX", "Jobs", "Jobs/2026", "Trash"}) {
		t.Errorf("mailboxes after rename = %v", names)
	}
	if mb, _ := e.Mailbox(ctx, "bob@example.org", "Jobs"); mb == nil || mb.UIDValidity != a.UIDValidity || mb.ID != a.ID {
		t.Errorf("a renamed mailbox changed identity: %+v, was %+v", mb, a)
	}
	if _, _, err := e.Append(ctx, "bob@example.org", "Jobs", strings.NewReader("x\r\n"), base, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteMailbox(ctx, "bob@example.org", "Jobs"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Mailbox(ctx, "bob@example.org", "Jobs"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("deleted mailbox still there: %v", err)
	}
	again, err := e.CreateMailbox(ctx, "bob@example.org", mailbox.NewMailbox{Name: "Jobs"})
	if err != nil {
		t.Fatal(err)
	}
	if again.UIDValidity <= a.UIDValidity {
		t.Errorf("a re-made mailbox has UIDVALIDITY %d, not above the old %d", again.UIDValidity, a.UIDValidity)
	}
	if uids, _ := e.UIDs(ctx, again.ID, 0); len(uids) != 0 {
		t.Errorf("a re-made mailbox holds %v", uids)
	}
}

// testSubscriptions: subscriptions are a list of names of their own.
func testSubscriptions(t *testing.T, e Engine) {
	addAccount(t, e, "bob@example.org")
	subs := func() []string {
		t.Helper()
		s, err := e.Subscriptions(ctx, "bob@example.org")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if got := subs(); !slices.Equal(got, []string{"INBOX", "Trash"}) {
		t.Errorf("subscriptions of a new account = %v", got)
	}
	if err := e.SetSubscribed(ctx, "bob@example.org", "Lists/go", true); err != nil {
		t.Fatal(err)
	}
	if err := e.SetSubscribed(ctx, "bob@example.org", "Trash", false); err != nil {
		t.Fatal(err)
	}
	if got := subs(); !slices.Equal(got, []string{"INBOX", "Lists/go"}) {
		t.Errorf("subscriptions = %v, want INBOX and a name that does not exist", got)
	}
	if mb, _ := e.Mailbox(ctx, "bob@example.org", "Trash"); mb.Subscribed {
		t.Errorf("Trash reads as subscribed after unsubscribing")
	}
}

func testMessages(t *testing.T, e Engine) {
	addAccount(t, e, "bob@example.org")
	u := "bob@example.org"
	var uids []uint32
	for i := range 5 {
		var flags []string
		if i%2 == 0 {
			flags = []string{mailbox.FlagSeen}
		}
		mb, uid, err := e.Append(ctx, u, "INBOX", strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i)), base, flags)
		if err != nil {
			t.Fatal(err)
		}
		if uid != uint32(i+1) || mb.UIDNext != uid+1 {
			t.Fatalf("append %d: UID %d, UIDNEXT %d", i, uid, mb.UIDNext)
		}
		uids = append(uids, uid)
	}
	mb, ms := inbox(t, e, u)
	if mb.Messages != 5 || mb.Unseen != 2 || len(ms) != 5 {
		t.Fatalf("INBOX: %+v with %d messages", mb, len(ms))
	}
	if got, _ := e.UIDs(ctx, mb.ID, 3); !slices.Equal(got, []uint32{4, 5}) {
		t.Errorf("UIDs after 3 = %v", got)
	}
	if got, _ := e.Messages(ctx, mb.ID, []uint32{5, 99, 2}); len(got) != 2 || got[0].UID != 5 || got[1].UID != 2 {
		t.Errorf("Messages(5, 99, 2) = %+v", got)
	}
	changes, id, err := e.SetFlags(ctx, u, "INBOX", []uint32{1, 2, 99}, mailbox.FlagsAdd, []string{mailbox.FlagDeleted, mailbox.FlagSeen})
	if err != nil || id != mb.ID || len(changes) != 2 {
		t.Fatalf("SetFlags = %+v, %d, %v", changes, id, err)
	}
	if !mailbox.HasFlag(changes[1].Flags, mailbox.FlagDeleted) || !mailbox.HasFlag(changes[1].Flags, mailbox.FlagSeen) {
		t.Errorf("flags after +FLAGS = %v", changes[1].Flags)
	}
	if mb, _ := e.Mailbox(ctx, u, "INBOX"); mb.Unseen != 1 {
		t.Errorf("unseen after marking 2 seen = %d, want 1", mb.Unseen)
	}
	n := 0
	err = e.ForEachMessage(ctx, mb.ID, func(m mailbox.Message, r mailbox.HeadReader) error {
		n++
		head, ok, err := r.Head(ctx, m)
		if err != nil || !ok || !strings.HasPrefix(string(head), "Subject: ") {
			return fmt.Errorf("head of %d: %q, %v, %v", m.UID, head, ok, err)
		}
		return nil
	})
	if err != nil || n != 5 {
		t.Errorf("ForEachMessage: %d messages, %v", n, err)
	}
	gone, _, err := e.Remove(ctx, u, "INBOX", []uint32{1, 2, 3}, true)
	if err != nil || !slices.Equal(gone, []uint32{1, 2}) {
		t.Fatalf("Remove(deleted only) = %v, %v; want [1 2]", gone, err)
	}
	mb, ms = inbox(t, e, u)
	if mb.Messages != 3 || len(ms) != 3 || mb.UIDNext != 6 || mb.Unseen != 1 {
		t.Errorf("after expunge: %+v", mb)
	}
	first, next, err := e.ClaimRecent(ctx, u, "INBOX")
	if err != nil || first != 1 || next != 6 {
		t.Errorf("ClaimRecent = %d, %d, %v; want 1, 6", first, next, err)
	}
	if first, next, _ := e.ClaimRecent(ctx, u, "INBOX"); first < next {
		t.Errorf("second ClaimRecent handed out [%d, %d) again", first, next)
	}
	if _, _, err := e.Append(ctx, u, "Nope", strings.NewReader("x"), base, nil); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("append to an unknown mailbox: %v", err)
	}
}

// testHeaderCopy: the stored header copy of a message, filed by a local
// delivery or appended, is its whole header section (through the blank
// line; the whole message when it has none) or nothing at all, never a
// part of it: IMAP answers header fields from the copy when there is one,
// and a field past a cut would be missed. A header section over the
// store's limit (32 KiB) has no copy.
func testHeaderCopy(t *testing.T, e Engine) {
	u := "bob@example.org"
	addAccount(t, e, u)
	var long strings.Builder
	long.WriteString("Subject: long\r\n")
	for i := 0; long.Len() < 60<<10; i++ {
		fmt.Fprintf(&long, "X-Filler-%d: %s\r\n", i, strings.Repeat("f", 60))
	}
	long.WriteString("X-Late: v\r\n")
	for _, tc := range []struct {
		name, msg string
		copied    bool // a copy must be there
	}{
		{"short", "Subject: short\r\n\r\nbody\r\n", true},
		{"lf only", "Subject: lf\n\nbody\n", true},
		{"all header", "Subject: all header\r\n", true},
		{"over the limit", long.String() + "\r\nbody\r\n", false},
		{"over the limit, no body", long.String(), false},
		{"over the limit, body over a chunk", long.String() + "\r\n" + strings.Repeat("b", 3<<20), false},
		{"in a long message", "Subject: big\r\n\r\n" + strings.Repeat("b\r\n", 1<<20), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := message(u)
			enqueue(t, e, m, tc.msg)
			err := e.Update(ctx, m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
				m.Rcpts[0].State = spool.Delivered
				return spool.Effects{File: &spool.Filing{Accounts: []string{u}, Date: base}}, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := e.Append(ctx, u, "INBOX", strings.NewReader(tc.msg), base, nil); err != nil {
				t.Fatal(err)
			}
			_, ms := inbox(t, e, u)
			want := tc.msg
			if i := strings.Index(want, "\n\r\n"); i >= 0 && (strings.Index(want, "\n\n") < 0 || i < strings.Index(want, "\n\n")) {
				want = want[:i+3]
			} else if i := strings.Index(want, "\n\n"); i >= 0 {
				want = want[:i+2]
			}
			for _, m := range ms[len(ms)-2:] {
				head, ok, err := e.Head(ctx, m)
				switch {
				case err != nil:
					t.Errorf("UID %d: Head: %v", m.UID, err)
				case ok && string(head) != want:
					t.Errorf("UID %d: a %d-byte header copy of a %d-byte header section (%.40q...)", m.UID, len(head), len(want), head)
				case !ok && tc.copied:
					t.Errorf("UID %d: no header copy", m.UID)
				case ok && !tc.copied:
					t.Errorf("UID %d: a header copy of %d bytes, over the limit", m.UID, len(head))
				}
			}
		})
	}
}

func testCopyMove(t *testing.T, e Engine) {
	addAccount(t, e, "bob@example.org")
	u := "bob@example.org"
	for i := range 3 {
		if _, _, err := e.Append(ctx, u, "INBOX", strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nx\r\n", i)), base, nil); err != nil {
			t.Fatal(err)
		}
	}
	res, err := e.Copy(ctx, u, "INBOX", "Trash", []uint32{1, 3, 42}, false)
	if err != nil || !slices.Equal(res.SrcUIDs, []uint32{1, 3}) || !slices.Equal(res.DstUIDs, []uint32{1, 2}) {
		t.Fatalf("Copy = %+v, %v", res, err)
	}
	trash, err := e.Mailbox(ctx, u, "Trash")
	if err != nil || res.UIDValidity != trash.UIDValidity || res.DstID != trash.ID || trash.Messages != 2 {
		t.Fatalf("Trash after copy: %+v, %v (result %+v)", trash, err, res)
	}
	res, err = e.Copy(ctx, u, "INBOX", "Trash", []uint32{2}, true)
	if err != nil || !slices.Equal(res.DstUIDs, []uint32{3}) {
		t.Fatalf("Move = %+v, %v", res, err)
	}
	mb, ms := inbox(t, e, u)
	if mb.Messages != 2 || len(ms) != 2 {
		t.Errorf("INBOX after move holds %d", len(ms))
	}
	// The copies share the body; removing the originals keeps them readable.
	if gone, _, err := e.Remove(ctx, u, "INBOX", []uint32{1, 3}, false); err != nil || len(gone) != 2 {
		t.Fatalf("Remove: %v, %v", gone, err)
	}
	tr, _ := e.Mailbox(ctx, u, "Trash")
	tuids, _ := e.UIDs(ctx, tr.ID, 0)
	tms, _ := e.Messages(ctx, tr.ID, tuids)
	for i, m := range tms {
		if got := readMessage(t, e, m); !strings.HasPrefix(got, "Subject: ") {
			t.Errorf("copy %d reads %q after the original went", i, got)
		}
	}
}

// testUIDsNeverReused: UIDs keep growing after expunges.
func testUIDsNeverReused(t *testing.T, e Engine) {
	addAccount(t, e, "bob@example.org")
	u := "bob@example.org"
	for range 3 {
		if _, _, err := e.Append(ctx, u, "INBOX", strings.NewReader("x"), base, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := e.Remove(ctx, u, "INBOX", []uint32{2, 3}, false); err != nil {
		t.Fatal(err)
	}
	if _, uid, err := e.Append(ctx, u, "INBOX", strings.NewReader("y"), base, nil); err != nil || uid != 4 {
		t.Errorf("append after expunge: UID %d, %v; want 4", uid, err)
	}
}

// testConcurrentDeliveries: many writers into one INBOX (as many as the
// delivery loop's default workers) all succeed, none giving up on
// conflicts, and get distinct, dense UIDs and counts that add up.
func testConcurrentDeliveries(t *testing.T, e Engine) {
	addAccount(t, e, "bob@example.org")
	const writers, each = 32, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for range writers {
		wg.Go(func() {
			for range each {
				m := message("bob@example.org")
				if err := e.Enqueue(ctx, m, strings.NewReader("Subject: c\r\n\r\nx\r\n"), accepted(m)); err != nil {
					errs <- err
					return
				}
				err := e.Update(ctx, m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
					m.Rcpts[0].State = spool.Delivered
					return spool.Effects{File: &spool.Filing{Accounts: []string{"bob@example.org"}, Date: base}}, nil
				})
				if err != nil {
					errs <- err
				}
				if _, _, err := e.Append(ctx, "bob@example.org", "INBOX", strings.NewReader("x"), base, nil); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	mb, ms := inbox(t, e, "bob@example.org")
	if len(ms) != 2*writers*each || mb.Messages != uint32(len(ms)) || mb.UIDNext != uint32(len(ms)+1) {
		t.Fatalf("INBOX after %d concurrent deliveries and appends: %d messages, %+v", 2*writers*each, len(ms), mb)
	}
	for i, m := range ms {
		if m.UID != uint32(i+1) {
			t.Fatalf("UID %d at position %d: UIDs are not dense", m.UID, i)
		}
	}
}

// testNotifications: a filing tells the account's watchers, after the
// commit, and Publish reaches OnChange.
func testNotifications(t *testing.T, e Engine) {
	addAccount(t, e, "bob@example.org")
	got := make(chan string, 16)
	e.OnChange(func(user string, ev mailbox.Event) {
		if user == "bob@example.org" {
			got <- user
		}
	})
	defer e.OnChange(nil)
	m := message("bob@example.org")
	enqueue(t, e, m, "x")
	err := e.Update(ctx, m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
		m.Rcpts[0].State = spool.Delivered
		return spool.Effects{File: &spool.Filing{Accounts: []string{"bob@example.org"}, Date: base}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no change notice within 10 s of a delivery")
	}
	if _, ms := inbox(t, e, "bob@example.org"); len(ms) != 1 {
		t.Errorf("the notice came before the message was readable")
	}
	e.Publish("bob@example.org", mailbox.Event{Mailbox: 7, Flags: []uint32{1}})
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish did not reach OnChange within 10 s")
	}
}

func testSettings(t *testing.T, e Engine) {
	if v, err := e.Setting(ctx, "domains"); err != nil || v != nil {
		t.Errorf("unset setting = %q, %v", v, err)
	}
	for _, v := range []string{"one", "two"} {
		if err := e.PutSetting(ctx, "domains", []byte(v)); err != nil {
			t.Fatal(err)
		}
		if got, err := e.Setting(ctx, "domains"); err != nil || string(got) != v {
			t.Errorf("setting = %q, %v; want %q", got, err, v)
		}
	}
}

// syncCounter is implemented by engines whose commits become durable at a
// later sync (Badger): SyncStats says how many enqueue commits there were
// and the highest of them a completed sync covers.
type syncCounter interface {
	SyncStats() (committed, synced uint64)
}

// testSyncBeforeAck guards the relay's first promise: an enqueue returns
// (and the client hears 250) only once a sync that started after its commit
// has completed. One writer at a time, so that the commit after the one
// counted before the call is the enqueue's own. An engine whose every
// commit is durable when it returns (PostgreSQL with synchronous commit)
// has nothing to count; its own tests check that setting.
func testSyncBeforeAck(t *testing.T, e Engine) {
	sc, ok := e.(syncCounter)
	if !ok {
		t.Skip("every commit of this engine is durable when it returns")
	}
	for i := range 50 {
		before, _ := sc.SyncStats()
		m := message("bob@example.net")
		enqueue(t, e, m, fmt.Sprintf("message %d\r\n", i))
		if _, synced := sc.SyncStats(); synced < before+1 {
			t.Fatalf("enqueue %d returned before a sync covered its commit (commit %d, synced up to %d)", i, before+1, synced)
		}
	}
}
