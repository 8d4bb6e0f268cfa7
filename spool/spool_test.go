package spool_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	storebadger "github.com/relaymail/relay/internal/store/badger"
	"github.com/relaymail/relay/internal/testkit"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// t0 is the fake clock's start. UTC, so that times decoded from the stored
// JSON compare equal with reflect.DeepEqual.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.UTC)

// clock is a fake time source for spool.New.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is one spool on a real Badger in a temporary directory.
type env struct {
	dir    string
	db     *storebadger.DB
	engine *storebadger.Store
	s      *spool.Spool
	clock  *clock
}

// newEnv opens a database in a fresh temporary directory with the default
// (group) sync and a spool with a fake clock on it.
func newEnv(tb testing.TB) *env {
	tb.Helper()
	e := &env{dir: tb.TempDir(), clock: newClock()}
	e.open(tb)
	return e
}

// open (re)opens the database in e.dir and a new spool on it.
func (e *env) open(tb testing.TB) {
	tb.Helper()
	e.engine, e.db = testkit.BadgerAt(tb, e.dir, e.clock.Now)
	e.s = spool.New(e.engine, e.clock.Now)
}

// reopen closes the database and opens it again from disk.
func (e *env) reopen(tb testing.TB) {
	tb.Helper()
	if err := e.db.Close(); err != nil {
		tb.Fatalf("close: %v", err)
	}
	e.open(tb)
}

// account makes a mailbox account on the spool's store, for updates that
// file a message (local delivery).
func (e *env) account(tb testing.TB, addr string) {
	tb.Helper()
	err := e.engine.CreateAccount(context.Background(), mailbox.Account{Address: addr, Hash: []byte("x"), Created: t0},
		[]mailbox.NewMailbox{{Name: "INBOX"}})
	if err != nil && !errors.Is(err, mailbox.ErrUserExists) {
		tb.Fatal(err)
	}
}

// inboxCount is how many messages addr's INBOX holds.
func (e *env) inboxCount(tb testing.TB, addr string) int {
	tb.Helper()
	mb, err := e.engine.Mailbox(context.Background(), addr, "INBOX")
	if err != nil {
		tb.Fatal(err)
	}
	return int(mb.Messages)
}

func rcpt(addr string) spool.Recipient { return spool.Recipient{Address: addr} }

func rcptAt(addr string, at time.Time) spool.Recipient {
	return spool.Recipient{Address: addr, NextAttempt: at}
}

// enqueue queues body for rcpts and returns the message as Enqueue left it.
func (e *env) enqueue(tb testing.TB, body []byte, rcpts ...spool.Recipient) *spool.Message {
	tb.Helper()
	m := &spool.Message{
		ID:       e.s.NewID(),
		ClientIP: "192.0.2.7",
		Helo:     "client.example.org",
		From:     "sender@example.org",
		Params:   spool.MailParams{Size: int64(len(body)), Body: "8BITMIME"},
		Rcpts:    rcpts,
	}
	if err := e.s.Enqueue(m, bytes.NewReader(body)); err != nil {
		tb.Fatalf("Enqueue: %v", err)
	}
	return m
}

func (e *env) get(tb testing.TB, id string) *spool.Message {
	tb.Helper()
	m, err := e.s.Get(id)
	if err != nil {
		tb.Fatalf("Get(%s): %v", id, err)
	}
	return m
}

func (e *env) body(tb testing.TB, id string) []byte {
	tb.Helper()
	r, err := e.s.Body(id)
	if err != nil {
		tb.Fatalf("Body(%s): %v", id, err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		tb.Fatalf("read body of %s: %v", id, err)
	}
	return b
}

func (e *env) due(tb testing.TB, now time.Time, limit int) []string {
	tb.Helper()
	// What is due is what a claim at now hands out; the claims are given
	// back at once.
	ls, err := e.engine.Claim(context.Background(), now, limit, time.Minute)
	if err != nil {
		tb.Fatalf("Claim: %v", err)
	}
	var ids []string
	for _, l := range ls {
		ids = append(ids, l.ID)
		if err := e.engine.Release(context.Background(), l); err != nil {
			tb.Fatalf("Release: %v", err)
		}
	}
	return ids
}

func (e *env) count(tb testing.TB) int {
	tb.Helper()
	n, err := e.s.Count()
	if err != nil {
		tb.Fatalf("Count: %v", err)
	}
	return n
}

func (e *env) update(tb testing.TB, id string, fn func(m *spool.Message)) {
	tb.Helper()
	err := e.s.Update(id, nil, func(m *spool.Message) (spool.Effects, error) {
		fn(m)
		return spool.Effects{}, nil
	})
	if err != nil {
		tb.Fatalf("Update(%s): %v", id, err)
	}
}

// keys returns the raw keys under prefix (see the key layout in the spool
// package documentation).
func (e *env) keys(tb testing.TB, prefix string) []string {
	tb.Helper()
	var out []string
	err := e.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			out = append(out, string(it.Item().KeyCopy(nil)))
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("scan %q: %v", prefix, err)
	}
	return out
}

// dueKeysFor counts the due-index keys that point at id.
func (e *env) dueKeysFor(tb testing.TB, id string) int {
	tb.Helper()
	n := 0
	for _, k := range e.keys(tb, "q/d/") {
		if len(k) == len("q/d/")+8+len(id) && k[len(k)-len(id):] == id {
			n++
		}
	}
	return n
}

// randBytes returns n reproducible pseudo-random bytes.
func randBytes(n int, seed uint64) []byte {
	var s [32]byte
	s[0] = byte(seed)
	s[1] = byte(seed >> 8)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

func assertNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, spool.ErrNotFound) {
		t.Errorf("%s: err = %v, want ErrNotFound", what, err)
	}
}

// assertGone checks that nothing of message id is left in the database.
func (e *env) assertGone(t *testing.T, id string) {
	t.Helper()
	_, err := e.s.Get(id)
	assertNotFound(t, "Get", err)
	_, err = e.s.Body(id)
	assertNotFound(t, "Body", err)
	if k := e.keys(t, "q/e/"+id); len(k) != 0 {
		t.Errorf("envelope keys left: %q", k)
	}
	if k := e.keys(t, "q/b/"+id); len(k) != 0 {
		t.Errorf("%d body chunk keys left", len(k))
	}
	if n := e.dueKeysFor(t, id); n != 0 {
		t.Errorf("%d due-index keys left", n)
	}
	if slices.Contains(e.due(t, t0.Add(1000*time.Hour), 1000), id) {
		t.Errorf("Due still returns %s", id)
	}
}

func TestEnqueueGet(t *testing.T) {
	e := newEnv(t)
	body := []byte("Subject: hi\r\n\r\nhello\r\n")
	m := &spool.Message{
		ID:       e.s.NewID(),
		ClientIP: "2001:db8::1",
		Helo:     "mx.example.net",
		From:     "alice@example.org",
		Params: spool.MailParams{
			Size: 100, Body: "8BITMIME", SMTPUTF8: true, Ret: "HDRS", EnvID: "env-1", Auth: "alice@example.org",
		},
		Rcpts: []spool.Recipient{
			{Address: "bob@example.net", Notify: []string{"SUCCESS", "FAILURE"}, ORcpt: "rfc822;bob@example.net"},
			{Address: "carol@example.com"},
		},
	}
	if err := e.s.Enqueue(m, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	want := &spool.Message{
		ID:       m.ID,
		Arrived:  t0,
		ClientIP: "2001:db8::1",
		Helo:     "mx.example.net",
		From:     "alice@example.org",
		Params:   m.Params,
		Rcpts: []spool.Recipient{
			{
				Address: "bob@example.net", Notify: []string{"SUCCESS", "FAILURE"}, ORcpt: "rfc822;bob@example.net",
				State: spool.Pending, NextAttempt: t0,
			},
			{Address: "carol@example.com", State: spool.Pending, NextAttempt: t0},
		},
		Size: int64(len(body)),
		Due:  t0,
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("Enqueue left message as\n%+v\nwant\n%+v", m, want)
	}
	got := e.get(t, m.ID)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Get =\n%+v\nwant\n%+v", got, want)
	}
	if b := e.body(t, m.ID); !bytes.Equal(b, body) {
		t.Errorf("Body = %q, want %q", b, body)
	}
	if got.Done() {
		t.Error("fresh message is Done")
	}
	if ids := e.due(t, t0, 10); !slices.Equal(ids, []string{m.ID}) {
		t.Errorf("Due = %v, want [%s]", ids, m.ID)
	}
}

// TestEnqueueKeepsGivenFields: Enqueue fills in only what is missing.
func TestEnqueueKeepsGivenFields(t *testing.T) {
	e := newEnv(t)
	arrived := t0.Add(-time.Hour)
	later := t0.Add(7 * time.Minute)
	m := &spool.Message{
		ID:      e.s.NewID(),
		Arrived: arrived,
		From:    "",
		Rcpts:   []spool.Recipient{rcptAt("a@example.net", later), rcpt("b@example.net")},
	}
	if err := e.s.Enqueue(m, bytes.NewReader(nil)); err != nil {
		t.Fatal(err)
	}
	got := e.get(t, m.ID)
	if !got.Arrived.Equal(arrived) {
		t.Errorf("Arrived = %v, want %v", got.Arrived, arrived)
	}
	if !got.Rcpts[0].NextAttempt.Equal(later) || !got.Rcpts[1].NextAttempt.Equal(t0) {
		t.Errorf("NextAttempt = %v, %v, want %v, %v", got.Rcpts[0].NextAttempt, got.Rcpts[1].NextAttempt, later, t0)
	}
	if got.Size != 0 || len(e.body(t, m.ID)) != 0 {
		t.Errorf("empty body: Size %d", got.Size)
	}
	if !got.Due.Equal(t0) {
		t.Errorf("Due = %v, want the earliest next attempt %v", got.Due, t0)
	}
}

func TestEnqueueRejects(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name string
		m    *spool.Message
	}{
		{"no ID", &spool.Message{From: "a@example.org", Rcpts: []spool.Recipient{rcpt("b@example.net")}}},
		{"no recipients", &spool.Message{ID: e.s.NewID(), From: "a@example.org"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := e.s.Enqueue(tc.m, bytes.NewReader([]byte("x"))); err == nil {
				t.Fatal("Enqueue succeeded")
			}
		})
	}
	if n := e.count(t); n != 0 {
		t.Errorf("Count = %d after rejected enqueues", n)
	}
	if k := e.keys(t, "q/"); len(k) != 0 {
		t.Errorf("keys left: %q", k)
	}
}

// TestEnqueueBodyError: a body that fails half way (client disconnect) leaves
// nothing behind, not even the chunks read before the error.
func TestEnqueueBodyError(t *testing.T) {
	e := newEnv(t)
	errCut := errors.New("connection reset")
	body := io.MultiReader(bytes.NewReader(randBytes(storebadger.BodyChunk+storebadger.BodyChunk/2, 1)), iotest.ErrReader(errCut))
	m := &spool.Message{ID: e.s.NewID(), From: "a@example.org", Rcpts: []spool.Recipient{rcpt("b@example.net")}}
	err := e.s.Enqueue(m, body)
	if !errors.Is(err, errCut) {
		t.Fatalf("Enqueue = %v, want an error wrapping %v", err, errCut)
	}
	_, err = e.s.Get(m.ID)
	assertNotFound(t, "Get", err)
	if k := e.keys(t, "q/"); len(k) != 0 {
		t.Errorf("%d keys left after a failed enqueue", len(k))
	}
}

func TestBodyRoundTrip(t *testing.T) {
	e := newEnv(t)
	for i, tc := range []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"1 byte", 1},
		{"small", 4 << 10},
		{"below value threshold", storebadger.ValueThreshold - 1},
		{"value threshold", storebadger.ValueThreshold},
		{"chunk-1", storebadger.BodyChunk - 1},
		{"chunk", storebadger.BodyChunk},
		{"chunk+1", storebadger.BodyChunk + 1},
		{"3 chunks and a bit", 3*storebadger.BodyChunk + 12345},
		{"exactly 4 chunks", 4 * storebadger.BodyChunk},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := randBytes(tc.size, uint64(i))
			m := &spool.Message{ID: e.s.NewID(), From: "a@example.org", Rcpts: []spool.Recipient{rcpt("b@example.net")}}
			// HalfReader: Enqueue must fill its chunks from short reads.
			if err := e.s.Enqueue(m, iotest.HalfReader(bytes.NewReader(want))); err != nil {
				t.Fatal(err)
			}
			if m.Size != int64(tc.size) {
				t.Errorf("Size = %d, want %d", m.Size, tc.size)
			}
			if got := e.get(t, m.ID).Size; got != int64(tc.size) {
				t.Errorf("stored Size = %d, want %d", got, tc.size)
			}
			if got := e.body(t, m.ID); !bytes.Equal(got, want) {
				t.Errorf("Body differs: got %d bytes, want %d", len(got), len(want))
			}
			wantChunks := (tc.size + storebadger.BodyChunk - 1) / storebadger.BodyChunk
			if k := e.keys(t, "q/b/"+m.ID); len(k) != wantChunks {
				t.Errorf("%d body chunks stored, want %d", len(k), wantChunks)
			}
			// The reader behaves for every read pattern.
			r, err := e.s.Body(m.ID)
			if err != nil {
				t.Fatal(err)
			}
			if err := iotest.TestReader(r, want); err != nil {
				t.Errorf("Body reader: %v", err)
			}
		})
	}
}

func TestListAndCount(t *testing.T) {
	e := newEnv(t)
	if n := e.count(t); n != 0 {
		t.Fatalf("Count of empty spool = %d", n)
	}
	if l, err := e.s.List(); err != nil || len(l) != 0 {
		t.Fatalf("List of empty spool = %v, %v", l, err)
	}
	var ids []string
	for i := range 5 {
		m := e.enqueue(t, fmt.Appendf(nil, "message %d", i), rcpt(fmt.Sprintf("r%d@example.net", i)))
		ids = append(ids, m.ID)
		e.clock.Advance(time.Second)
		if n := e.count(t); n != i+1 {
			t.Fatalf("Count = %d after %d enqueues", n, i+1)
		}
	}
	list, err := e.s.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, m := range list {
		got = append(got, m.ID)
		if want := e.get(t, m.ID); !reflect.DeepEqual(m, want) {
			t.Errorf("List[%d] = %+v, Get = %+v", i, m, want)
		}
	}
	if !slices.Equal(got, ids) {
		t.Errorf("List order = %v, want arrival order %v", got, ids)
	}

	if err := e.s.Delete(ids[1]); err != nil {
		t.Fatal(err)
	}
	e.update(t, ids[3], func(m *spool.Message) { m.Rcpts[0].State = spool.Delivered })
	if n := e.count(t); n != 3 {
		t.Errorf("Count = %d after a delete and a delivery, want 3", n)
	}
	list, err = e.s.List()
	if err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	for _, m := range list {
		got = append(got, m.ID)
	}
	if want := []string{ids[0], ids[2], ids[4]}; !slices.Equal(got, want) {
		t.Errorf("List = %v, want %v", got, want)
	}
}

func TestHoldRelease(t *testing.T) {
	e := newEnv(t)
	a := e.enqueue(t, []byte("a"), rcptAt("a@example.net", t0.Add(2*time.Minute)))
	b := e.enqueue(t, []byte("b"), rcptAt("b@example.net", t0.Add(time.Minute)))
	later := t0.Add(time.Hour)

	if err := e.s.Hold(b.ID); err != nil {
		t.Fatal(err)
	}
	got := e.get(t, b.ID)
	if !got.Hold || !got.Due.IsZero() {
		t.Errorf("held message: Hold %v, Due %v; want true, zero", got.Hold, got.Due)
	}
	if ids := e.due(t, later, 10); !slices.Equal(ids, []string{a.ID}) {
		t.Errorf("Due with b held = %v, want [a]", ids)
	}
	if n := e.dueKeysFor(t, b.ID); n != 0 {
		t.Errorf("held message has %d due keys", n)
	}
	// A held message is still queued, listed and readable.
	if n := e.count(t); n != 2 {
		t.Errorf("Count = %d, want 2", n)
	}
	if string(e.body(t, b.ID)) != "b" {
		t.Error("body of held message changed")
	}
	// Holding twice is harmless; so is an update of a held message.
	if err := e.s.Hold(b.ID); err != nil {
		t.Fatal(err)
	}
	e.update(t, b.ID, func(m *spool.Message) { m.Rcpts[0].Reply = spool.TempReply("", "operator note") })
	if ids := e.due(t, later, 10); !slices.Equal(ids, []string{a.ID}) {
		t.Errorf("Due after updating held b = %v, want [a]", ids)
	}

	if err := e.s.Release(b.ID); err != nil {
		t.Fatal(err)
	}
	got = e.get(t, b.ID)
	if got.Hold || !got.Due.Equal(t0.Add(time.Minute)) {
		t.Errorf("released message: Hold %v, Due %v; want false, %v", got.Hold, got.Due, t0.Add(time.Minute))
	}
	if ids := e.due(t, later, 10); !slices.Equal(ids, []string{b.ID, a.ID}) {
		t.Errorf("Due after release = %v, want [b a]", ids)
	}
	// Releasing a message that is not held changes nothing.
	if err := e.s.Release(a.ID); err != nil {
		t.Fatal(err)
	}
	if n := e.dueKeysFor(t, a.ID); n != 1 {
		t.Errorf("%d due keys for a after a no-op release, want 1", n)
	}
}

func TestDelete(t *testing.T) {
	e := newEnv(t)
	keep := e.enqueue(t, []byte("keep"), rcpt("k@example.net"))
	big := randBytes(2*storebadger.BodyChunk+5, 2)
	del := e.enqueue(t, big, rcpt("d1@example.net"), rcpt("d2@example.net"))
	if err := e.s.Delete(del.ID); err != nil {
		t.Fatal(err)
	}
	e.assertGone(t, del.ID)
	if string(e.body(t, keep.ID)) != "keep" {
		t.Error("other message's body damaged")
	}
	if ids := e.due(t, t0, 10); !slices.Equal(ids, []string{keep.ID}) {
		t.Errorf("Due = %v, want [keep]", ids)
	}

	// A held message (no due key) deletes cleanly too.
	if err := e.s.Hold(keep.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.s.Delete(keep.ID); err != nil {
		t.Fatal(err)
	}
	e.assertGone(t, keep.ID)
	if k := e.keys(t, "q/"); len(k) != 0 {
		t.Errorf("keys left in an empty spool: %q", k)
	}
}

func TestNotFound(t *testing.T) {
	e := newEnv(t)
	e.enqueue(t, []byte("x"), rcpt("x@example.net"))
	id := e.s.NewID() // valid, never enqueued
	for _, tc := range []struct {
		name string
		op   func() error
	}{
		{"Get", func() error { _, err := e.s.Get(id); return err }},
		{"Body", func() error { _, err := e.s.Body(id); return err }},
		{"Update", func() error {
			return e.s.Update(id, nil, func(*spool.Message) (spool.Effects, error) {
				t.Error("Update called fn for a missing message")
				return spool.Effects{}, nil
			})
		}},
		{"Hold", func() error { return e.s.Hold(id) }},
		{"Release", func() error { return e.s.Release(id) }},
		{"Delete", func() error { return e.s.Delete(id) }},
	} {
		t.Run(tc.name, func(t *testing.T) { assertNotFound(t, tc.name, tc.op()) })
	}
	if n := e.count(t); n != 1 {
		t.Errorf("Count = %d, want 1", n)
	}
}

func TestDueOrder(t *testing.T) {
	e := newEnv(t)
	mins := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Minute) }
	// Enqueued in an order unlike their due order, so that an index sorted
	// by ID would fail.
	id := map[string]string{}
	for _, m := range []struct {
		name  string
		rcpts []spool.Recipient
	}{
		{"m3", []spool.Recipient{rcptAt("a@x.example", mins(3))}},
		{"future", []spool.Recipient{rcptAt("a@x.example", mins(60))}},
		{"m1", []spool.Recipient{rcptAt("a@x.example", mins(1))}},
		{"held", []spool.Recipient{rcptAt("a@x.example", mins(-1))}},
		// Due at its earliest pending recipient.
		{"m2", []spool.Recipient{rcptAt("a@x.example", mins(20)), rcptAt("b@x.example", mins(2))}},
		// No NextAttempt: due at enqueue time (t0).
		{"now", []spool.Recipient{rcpt("a@x.example")}},
	} {
		id[m.name] = e.enqueue(t, []byte(m.name), m.rcpts...).ID
	}
	if err := e.s.Hold(id["held"]); err != nil {
		t.Fatal(err)
	}
	names := func(ids []string) []string {
		rev := map[string]string{}
		for n, i := range id {
			rev[i] = n
		}
		out := []string{}
		for _, i := range ids {
			out = append(out, rev[i])
		}
		return out
	}
	check := func(t *testing.T, cases []struct {
		now   time.Time
		limit int
		want  []string
	}) {
		t.Helper()
		for _, tc := range cases {
			got := names(e.due(t, tc.now, tc.limit))
			if !slices.Equal(got, tc.want) {
				t.Errorf("Due(t0%+v, %d) = %v, want %v", tc.now.Sub(t0), tc.limit, got, tc.want)
			}
		}
	}
	t.Run("held", func(t *testing.T) {
		check(t, []struct {
			now   time.Time
			limit int
			want  []string
		}{
			{mins(-2), 10, []string{}},
			{t0.Add(-time.Nanosecond), 10, []string{}},
			{t0, 10, []string{"now"}},
			{mins(2), 10, []string{"now", "m1", "m2"}}, // at or before now
			{mins(2).Add(-time.Nanosecond), 10, []string{"now", "m1"}},
			{mins(5), 10, []string{"now", "m1", "m2", "m3"}},
			{mins(5), 2, []string{"now", "m1"}},
			{mins(5), 1, []string{"now"}},
			{mins(5), 0, []string{}},
			{mins(600), 100, []string{"now", "m1", "m2", "m3", "future"}},
		})
		at, ok, err := e.s.NextDue()
		if err != nil || !ok || !at.Equal(t0) {
			t.Errorf("NextDue = %v, %v, %v; want %v", at, ok, err, t0)
		}
	})
	if err := e.s.Release(id["held"]); err != nil {
		t.Fatal(err)
	}
	t.Run("released", func(t *testing.T) {
		check(t, []struct {
			now   time.Time
			limit int
			want  []string
		}{
			{mins(-2), 10, []string{}},
			{mins(-1), 10, []string{"held"}},
			{mins(5), 10, []string{"held", "now", "m1", "m2", "m3"}},
			{mins(5), 3, []string{"held", "now", "m1"}},
		})
		at, ok, err := e.s.NextDue()
		if err != nil || !ok || !at.Equal(mins(-1)) {
			t.Errorf("NextDue = %v, %v, %v; want %v", at, ok, err, mins(-1))
		}
	})
	t.Run("empty", func(t *testing.T) {
		for _, i := range id {
			if err := e.s.Delete(i); err != nil {
				t.Fatal(err)
			}
		}
		if _, ok, err := e.s.NextDue(); ok || err != nil {
			t.Errorf("NextDue on an empty spool: ok %v, err %v", ok, err)
		}
		check(t, []struct {
			now   time.Time
			limit int
			want  []string
		}{{mins(600), 10, []string{}}})
	})
}

// TestDueSameTime: messages due at the same instant all come back.
func TestDueSameTime(t *testing.T) {
	e := newEnv(t)
	var ids []string
	for range 5 {
		ids = append(ids, e.enqueue(t, []byte("x"), rcpt("a@example.net")).ID)
	}
	got := e.due(t, t0, 10)
	slices.Sort(got)
	slices.Sort(ids)
	if !slices.Equal(got, ids) {
		t.Errorf("Due = %v, want all of %v", got, ids)
	}
}

func TestUpdateRecipientState(t *testing.T) {
	e := newEnv(t)
	m := e.enqueue(t, []byte("body"), rcpt("a@example.net"), rcpt("b@example.net"), rcpt("c@example.net"))
	other := e.enqueue(t, []byte("other"), rcptAt("o@example.net", t0.Add(7*time.Minute)))
	mins := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Minute) }

	type rcptWant struct {
		state    spool.State
		attempts int
		lastErr  string
		next     time.Time
	}
	for _, step := range []struct {
		name    string
		fn      func(m *spool.Message)
		wantDue time.Time
		want    []rcptWant
	}{
		{
			name: "a deferred",
			fn: func(m *spool.Message) {
				m.Rcpts[0].Attempts++
				m.Rcpts[0].Reply = spool.NewReply(451, "4.2.0", "mailbox busy")
				m.Rcpts[0].NextAttempt = mins(5)
			},
			wantDue: t0, // b and c are still due now
			want: []rcptWant{
				{spool.Pending, 1, "451 4.2.0 mailbox busy", mins(5)},
				{spool.Pending, 0, "", t0},
				{spool.Pending, 0, "", t0},
			},
		},
		{
			name: "b delivered, c deferred",
			fn: func(m *spool.Message) {
				m.Rcpts[1].State = spool.Delivered
				m.Rcpts[1].Attempts++
				m.Rcpts[2].Attempts++
				m.Rcpts[2].Reply = spool.NewReply(421, "4.7.0", "try later")
				m.Rcpts[2].NextAttempt = mins(10)
			},
			wantDue: mins(5), // a is now the earliest pending
			want: []rcptWant{
				{spool.Pending, 1, "451 4.2.0 mailbox busy", mins(5)},
				{spool.Delivered, 1, "", t0},
				{spool.Pending, 1, "421 4.7.0 try later", mins(10)},
			},
		},
		{
			name: "a failed",
			fn: func(m *spool.Message) {
				m.Rcpts[0].State = spool.Failed
				m.Rcpts[0].Attempts++
				m.Rcpts[0].Reply = spool.NewReply(550, "5.1.1", "no such user")
			},
			wantDue: mins(10), // only c is left
			want: []rcptWant{
				{spool.Failed, 2, "550 5.1.1 no such user", mins(5)},
				{spool.Delivered, 1, "", t0},
				{spool.Pending, 1, "421 4.7.0 try later", mins(10)},
			},
		},
		{
			name: "c retried earlier",
			fn: func(m *spool.Message) {
				m.Rcpts[2].NextAttempt = mins(3) // due entry moves backwards too
			},
			wantDue: mins(3),
			want: []rcptWant{
				{spool.Failed, 2, "550 5.1.1 no such user", mins(5)},
				{spool.Delivered, 1, "", t0},
				{spool.Pending, 1, "421 4.7.0 try later", mins(3)},
			},
		},
	} {
		t.Run(step.name, func(t *testing.T) {
			e.clock.Advance(time.Second)
			e.update(t, m.ID, step.fn)
			got := e.get(t, m.ID)
			if !got.Due.Equal(step.wantDue) {
				t.Errorf("Due field = %v, want %v", got.Due, step.wantDue)
			}
			for i, w := range step.want {
				r := got.Rcpts[i]
				if r.State != w.state || r.Attempts != w.attempts || r.Reply.String() != w.lastErr || !r.NextAttempt.Equal(w.next) {
					t.Errorf("rcpt %s = {%s %d %q %v}, want {%s %d %q %v}", r.Address,
						r.State, r.Attempts, r.Reply, r.NextAttempt, w.state, w.attempts, w.lastErr, w.next)
				}
			}
			// Exactly one due entry, at the new time: not due just before it,
			// due at it, and listed once however far ahead we look.
			if n := e.dueKeysFor(t, m.ID); n != 1 {
				t.Errorf("%d due keys for the message, want 1", n)
			}
			if slices.Contains(e.due(t, step.wantDue.Add(-time.Nanosecond), 100), m.ID) {
				t.Errorf("message due before %v", step.wantDue)
			}
			if !slices.Contains(e.due(t, step.wantDue, 100), m.ID) {
				t.Errorf("message not due at %v", step.wantDue)
			}
			all := e.due(t, mins(1000), 100)
			if n := countOf(all, m.ID); n != 1 {
				t.Errorf("Due lists the message %d times: %v", n, all)
			}
			if n := countOf(all, other.ID); n != 1 {
				t.Errorf("Due lists the other message %d times", n)
			}
			if string(e.body(t, m.ID)) != "body" {
				t.Error("body changed")
			}
		})
	}
}

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

func TestUpdateAllFinalRemovesMessage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		size  int
		hold  bool
		final []spool.State
	}{
		{"one delivered", 10, false, []spool.State{spool.Delivered}},
		{"delivered and failed", 100, false, []spool.State{spool.Delivered, spool.Failed}},
		{"all failed, multi-chunk", 2*storebadger.BodyChunk + 1, false, []spool.State{spool.Failed, spool.Failed, spool.Failed}},
		{"exactly one chunk", storebadger.BodyChunk, false, []spool.State{spool.Delivered}},
		{"held", 10, true, []spool.State{spool.Failed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			keep := e.enqueue(t, []byte("keep"), rcpt("k@example.net"))
			var rcpts []spool.Recipient
			for i := range tc.final {
				rcpts = append(rcpts, rcpt(fmt.Sprintf("r%d@example.net", i)))
			}
			m := e.enqueue(t, randBytes(tc.size, 3), rcpts...)
			if tc.hold {
				if err := e.s.Hold(m.ID); err != nil {
					t.Fatal(err)
				}
			}
			// Finish all but the last recipient first: the message stays.
			if len(tc.final) > 1 {
				e.update(t, m.ID, func(m *spool.Message) {
					for i := range len(tc.final) - 1 {
						m.Rcpts[i].State = tc.final[i]
					}
				})
				if got := e.get(t, m.ID); got.Done() {
					t.Fatal("message Done with a pending recipient")
				}
			}
			// The last outcome commits together with a local delivery
			// into the mailbox store.
			e.account(t, "owner@example.org")
			err := e.s.Update(m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
				last := len(tc.final) - 1
				m.Rcpts[last].State = tc.final[last]
				m.Rcpts[last].Attempts++
				return spool.Effects{File: &spool.Filing{Accounts: []string{"owner@example.org"}, Date: t0}}, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			e.assertGone(t, m.ID)
			if n := e.inboxCount(t, "owner@example.org"); n != 1 {
				t.Errorf("the delivery made in the same Update left %d message(s) in the INBOX, want 1", n)
			}
			if n := e.count(t); n != 1 {
				t.Errorf("Count = %d, want 1", n)
			}
			if string(e.body(t, keep.ID)) != "keep" {
				t.Error("other message damaged")
			}
			if ids := e.due(t, t0, 10); !slices.Equal(ids, []string{keep.ID}) {
				t.Errorf("Due = %v, want only the other message", ids)
			}
		})
	}
}

// TestUpdateErrorChangesNothing: when fn fails, neither its changes to the
// message nor its own writes are committed.
func TestUpdateErrorChangesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   func(m *spool.Message)
	}{
		{"deferral", func(m *spool.Message) {
			m.Rcpts[0].Attempts = 9
			m.Rcpts[0].Reply = spool.TempReply("", "nope")
			m.Rcpts[0].NextAttempt = t0.Add(time.Hour)
		}},
		{"all final", func(m *spool.Message) {
			for i := range m.Rcpts {
				m.Rcpts[i].State = spool.Delivered
			}
		}},
		{"hold", func(m *spool.Message) { m.Hold = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			body := randBytes(storebadger.BodyChunk+10, 4)
			m := e.enqueue(t, body, rcpt("a@example.net"), rcptAt("b@example.net", t0.Add(time.Minute)))
			before := e.get(t, m.ID)
			dueBefore := e.due(t, t0.Add(time.Hour), 10)
			keysBefore := e.keys(t, "q/")

			errBoom := errors.New("boom")
			e.account(t, "owner@example.org")
			changed := e.s.Changed()
			err := e.s.Update(m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
				tc.fn(m)
				return spool.Effects{File: &spool.Filing{Accounts: []string{"owner@example.org"}, Date: t0}}, errBoom
			})
			if !errors.Is(err, errBoom) {
				t.Fatalf("Update = %v, want an error wrapping %v", err, errBoom)
			}
			select {
			case <-changed:
				t.Error("a failed Update signalled a change")
			default:
			}
			if after := e.get(t, m.ID); !reflect.DeepEqual(after, before) {
				t.Errorf("message changed:\n%+v\nwas\n%+v", after, before)
			}
			if got := e.due(t, t0.Add(time.Hour), 10); !slices.Equal(got, dueBefore) {
				t.Errorf("Due = %v, was %v", got, dueBefore)
			}
			if got := e.keys(t, "q/"); !slices.Equal(got, keysBefore) {
				t.Errorf("spool keys changed:\n%q\nwere\n%q", got, keysBefore)
			}
			if !bytes.Equal(e.body(t, m.ID), body) {
				t.Error("body changed")
			}
			if n := e.inboxCount(t, "owner@example.org"); n != 0 {
				t.Errorf("the filing of a failed Update left %d message(s) in the INBOX", n)
			}
		})
	}
}

// TestUpdateConcurrent: concurrent updates of one message conflict in Badger
// and are retried, so none is lost.
func TestUpdateConcurrent(t *testing.T) {
	e := newEnv(t)
	m := e.enqueue(t, []byte("x"), rcpt("a@example.net"))
	const n = 10
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			err := e.s.Update(m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
				m.Rcpts[0].Attempts++
				return spool.Effects{}, nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := e.get(t, m.ID).Rcpts[0].Attempts; got != n {
		t.Errorf("Attempts = %d after %d concurrent increments", got, n)
	}
}

func TestChanged(t *testing.T) {
	e := newEnv(t)
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}

	ch := e.s.Changed()
	if closed(ch) {
		t.Fatal("Changed closed before any change")
	}
	// A waiter blocked on the channel wakes up.
	woke := make(chan struct{})
	go func() {
		<-ch
		close(woke)
	}()
	m := e.enqueue(t, []byte("x"), rcpt("a@example.net"))
	if !closed(ch) {
		t.Fatal("Changed not closed when Enqueue returned")
	}
	select {
	case <-woke:
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken by Enqueue")
	}
	if closed(e.s.Changed()) {
		t.Fatal("the next Changed channel is already closed")
	}

	for _, op := range []struct {
		name string
		fn   func() error
	}{
		{"Hold", func() error { return e.s.Hold(m.ID) }},
		{"Release", func() error { return e.s.Release(m.ID) }},
		{"Update", func() error {
			return e.s.Update(m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
				m.Rcpts[0].NextAttempt = t0.Add(time.Minute)
				return spool.Effects{}, nil
			})
		}},
		{"Delete", func() error { return e.s.Delete(m.ID) }},
	} {
		ch := e.s.Changed()
		if err := op.fn(); err != nil {
			t.Fatalf("%s: %v", op.name, err)
		}
		if !closed(ch) {
			t.Errorf("Changed not closed after %s", op.name)
		}
	}
}

// snapshot is everything a reopened spool must find again.
type snapshot struct {
	list   []*spool.Message
	bodies map[string][]byte
	due    []string
	count  int
}

func (e *env) snapshot(t *testing.T) snapshot {
	t.Helper()
	list, err := e.s.List()
	if err != nil {
		t.Fatal(err)
	}
	s := snapshot{list: list, bodies: map[string][]byte{}, due: e.due(t, t0.Add(1000*time.Hour), 1000), count: e.count(t)}
	for _, m := range list {
		s.bodies[m.ID] = e.body(t, m.ID)
	}
	return s
}

func TestReopen(t *testing.T) {
	e := newEnv(t)
	mins := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Minute) }
	plain := e.enqueue(t, []byte("plain"), rcpt("p@example.net"))
	multi := e.enqueue(t, []byte("multi"),
		spool.Recipient{Address: "a@example.net", Notify: []string{"NEVER"}, ORcpt: "rfc822;A@example.net"},
		rcpt("b@example.net"), rcpt("c@example.net"))
	e.update(t, multi.ID, func(m *spool.Message) {
		m.Rcpts[0].State = spool.Delivered
		m.Rcpts[0].Attempts = 1
		m.Rcpts[1].Attempts = 3
		m.Rcpts[1].Reply = spool.NewReply(452, "4.2.2", "over quota")
		m.Rcpts[1].NextAttempt = mins(40)
		m.Rcpts[2].State = spool.Failed
		m.Rcpts[2].Reply = spool.NewReply(550, "5.1.1", "unknown")
	})
	held := e.enqueue(t, []byte("held"), rcptAt("h@example.net", mins(2)))
	if err := e.s.Hold(held.ID); err != nil {
		t.Fatal(err)
	}
	bigBody := randBytes(3*storebadger.BodyChunk+7, 6)
	big := e.enqueue(t, bigBody, rcptAt("big@example.net", mins(5)))
	empty := e.enqueue(t, nil, rcpt("e@example.net"))
	gone := e.enqueue(t, []byte("gone"), rcpt("g@example.net"))
	if err := e.s.Delete(gone.ID); err != nil {
		t.Fatal(err)
	}

	before := e.snapshot(t)
	if before.count != 5 {
		t.Fatalf("Count = %d before reopen, want 5", before.count)
	}
	e.reopen(t)
	after := e.snapshot(t)

	if after.count != before.count {
		t.Errorf("Count = %d after reopen, was %d", after.count, before.count)
	}
	if len(after.list) != len(before.list) {
		t.Fatalf("List has %d messages after reopen, had %d", len(after.list), len(before.list))
	}
	for i := range before.list {
		if !reflect.DeepEqual(after.list[i], before.list[i]) {
			t.Errorf("message %d after reopen:\n%+v\nwas\n%+v", i, after.list[i], before.list[i])
		}
	}
	for id, b := range before.bodies {
		if !bytes.Equal(after.bodies[id], b) {
			t.Errorf("body of %s: %d bytes after reopen, %d before", id, len(after.bodies[id]), len(b))
		}
	}
	if !slices.Equal(after.due, before.due) {
		t.Errorf("Due after reopen = %v, was %v", after.due, before.due)
	}
	// Spot checks against what was written, not only against the snapshot.
	if want := []string{plain.ID, empty.ID, big.ID, multi.ID}; !slices.Equal(after.due, want) {
		t.Errorf("Due = %v, want [plain empty big multi] = %v", after.due, want)
	}
	if m := e.get(t, held.ID); !m.Hold {
		t.Error("hold flag lost")
	}
	mm := e.get(t, multi.ID)
	if mm.Rcpts[0].State != spool.Delivered || mm.Rcpts[1].State != spool.Pending || mm.Rcpts[2].State != spool.Failed ||
		mm.Rcpts[1].Attempts != 3 || mm.Rcpts[1].Reply.String() != "452 4.2.2 over quota" || !mm.Rcpts[1].NextAttempt.Equal(mins(40)) ||
		!slices.Equal(mm.Rcpts[0].Notify, []string{"NEVER"}) || mm.Rcpts[0].ORcpt != "rfc822;A@example.net" {
		t.Errorf("recipients after reopen: %+v", mm.Rcpts)
	}
	if !bytes.Equal(e.body(t, big.ID), bigBody) {
		t.Error("multi-chunk body differs after reopen")
	}
	_, err := e.s.Get(gone.ID)
	assertNotFound(t, "deleted message after reopen", err)

	// The reopened spool keeps working: release, finish, remove.
	if err := e.s.Release(held.ID); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(e.due(t, mins(2), 10), held.ID) {
		t.Error("released message not due after reopen")
	}
	e.update(t, big.ID, func(m *spool.Message) { m.Rcpts[0].State = spool.Delivered })
	e.assertGone(t, big.ID)
}

// TestLargeMessage: a 45 MiB message (under the 50 MiB default limit) commits
// in one transaction despite Badger's per-transaction size limit, survives a
// reopen byte for byte, and is removed again in one transaction.
func TestLargeMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("45 MiB message in -short mode")
	}
	const size = 45 << 20
	e := newEnv(t)
	body := randBytes(size, 7)
	want := sha256.Sum256(body)
	m := e.enqueue(t, body, rcpt("a@example.net"), rcpt("b@example.net"))
	body = nil // only the hash from here on

	e.reopen(t)
	got := e.get(t, m.ID)
	if got.Size != size {
		t.Errorf("Size = %d, want %d", got.Size, size)
	}
	r, err := e.s.Body(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		t.Fatalf("read body after %d bytes: %v", n, err)
	}
	if n != size || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Errorf("body after reopen: %d bytes, sha256 %x; want %d bytes, %x", n, h.Sum(nil), size, want)
	}
	if k := e.keys(t, "q/b/"+m.ID); len(k) != int(storebadger.NumChunks(int64(size))) {
		t.Errorf("%d chunks, want %d", len(k), storebadger.NumChunks(int64(size)))
	}

	e.update(t, m.ID, func(m *spool.Message) {
		m.Rcpts[0].State = spool.Delivered
		m.Rcpts[1].State = spool.Failed
	})
	e.assertGone(t, m.ID)
}

// TestNotices: a notice (a bounce) is queued in the update that records the
// failure it reports, and not at all when that update fails.
func TestNotices(t *testing.T) {
	e := newEnv(t)
	newMsg := func() *spool.Message {
		return &spool.Message{ID: e.s.NewID(), From: "", Rcpts: []spool.Recipient{{Address: "a@example.org", Notify: []string{"NEVER"}}}}
	}
	body := randBytes(storebadger.BodyChunk+100, 9)
	t.Run("rejects", func(t *testing.T) {
		if _, err := e.s.Notice(&spool.Message{Rcpts: newMsg().Rcpts}, nil); err == nil {
			t.Error("Notice without ID succeeded")
		}
		if _, err := e.s.Notice(&spool.Message{ID: e.s.NewID()}, nil); err == nil {
			t.Error("Notice without recipients succeeded")
		}
	})
	t.Run("bounce in Update", func(t *testing.T) {
		orig := e.enqueue(t, []byte("original"), rcpt("x@example.net"))
		bounce := newMsg()
		err := e.s.Update(orig.ID, nil, func(m *spool.Message) (spool.Effects, error) {
			m.Rcpts[0].State = spool.Failed
			m.Rcpts[0].Reply = spool.NewReply(550, "5.1.1", "no such user")
			n, err := e.s.Notice(bounce, append([]byte("bounce of "), body...))
			return spool.Effects{Notices: []spool.Notice{n}}, err
		})
		if err != nil {
			t.Fatal(err)
		}
		e.assertGone(t, orig.ID)
		if got := e.body(t, bounce.ID); !bytes.Equal(got, append([]byte("bounce of "), body...)) {
			t.Errorf("bounce body of %d bytes differs", len(got))
		}
		got := e.get(t, bounce.ID)
		if got.Size != int64(len(body)+10) || !got.Arrived.Equal(t0) || got.Rcpts[0].State != spool.Pending {
			t.Errorf("bounce: %+v", got)
		}
		if !slices.Contains(e.due(t, t0, 10), bounce.ID) {
			t.Error("bounce not due")
		}
	})
	t.Run("bounce rolled back", func(t *testing.T) {
		orig := e.enqueue(t, []byte("original"), rcpt("x@example.net"))
		errBoom := errors.New("boom")
		bounce := newMsg()
		err := e.s.Update(orig.ID, nil, func(m *spool.Message) (spool.Effects, error) {
			m.Rcpts[0].State = spool.Failed
			n, err := e.s.Notice(bounce, body)
			if err != nil {
				return spool.Effects{}, err
			}
			return spool.Effects{Notices: []spool.Notice{n}}, errBoom
		})
		if !errors.Is(err, errBoom) {
			t.Fatalf("Update = %v", err)
		}
		_, err = e.s.Get(bounce.ID)
		assertNotFound(t, "rolled-back bounce", err)
		if k := e.keys(t, "q/b/"+bounce.ID); len(k) != 0 {
			t.Errorf("%d body chunks of the rolled-back bounce stored", len(k))
		}
		if got := e.get(t, orig.ID); got.Rcpts[0].State != spool.Pending {
			t.Errorf("original changed: %+v", got.Rcpts[0])
		}
	})
}

func TestFlush(t *testing.T) {
	mins := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Minute) }
	for _, tc := range []struct {
		name string
		hold bool
	}{{"queued", false}, {"held", true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m := e.enqueue(t, []byte("x"),
				rcptAt("later@example.net", mins(60)),
				rcptAt("past@example.net", mins(-5)), // already due: keeps its time
				rcptAt("done@example.net", mins(120)),
			)
			e.update(t, m.ID, func(m *spool.Message) {
				m.Rcpts[1].NextAttempt = mins(30)
				m.Rcpts[2].State = spool.Delivered
			})
			if tc.hold {
				if err := e.s.Hold(m.ID); err != nil {
					t.Fatal(err)
				}
			}
			e.clock.Advance(time.Minute)
			now := e.clock.Now()
			if slices.Contains(e.due(t, now, 10), m.ID) {
				t.Fatal("due before the flush")
			}
			changed := e.s.Changed()
			if err := e.s.Flush(m.ID); err != nil {
				t.Fatal(err)
			}
			select {
			case <-changed:
			default:
				t.Error("Flush did not signal Changed")
			}
			got := e.get(t, m.ID)
			for i, want := range []time.Time{now, now, mins(120)} {
				if !got.Rcpts[i].NextAttempt.Equal(want) {
					t.Errorf("rcpt %s NextAttempt = %v, want %v", got.Rcpts[i].Address, got.Rcpts[i].NextAttempt, want)
				}
			}
			if got.Rcpts[2].State != spool.Delivered {
				t.Errorf("delivered recipient is %s after flush", got.Rcpts[2].State)
			}
			if got.Hold != tc.hold {
				t.Errorf("Hold = %v after flush, want %v", got.Hold, tc.hold)
			}
			if due := slices.Contains(e.due(t, now, 10), m.ID); due == tc.hold {
				t.Errorf("due now after flush = %v, want %v", due, !tc.hold)
			}
			if tc.hold {
				if err := e.s.Release(m.ID); err != nil {
					t.Fatal(err)
				}
				if !slices.Contains(e.due(t, now, 10), m.ID) {
					t.Error("flushed held message not due after release")
				}
			}
			if n := e.dueKeysFor(t, m.ID); n != 1 {
				t.Errorf("%d due keys, want 1", n)
			}
		})
	}
	t.Run("past stays", func(t *testing.T) {
		e := newEnv(t)
		m := e.enqueue(t, []byte("x"), rcptAt("a@example.net", mins(-5)))
		if err := e.s.Flush(m.ID); err != nil {
			t.Fatal(err)
		}
		if got := e.get(t, m.ID); !got.Rcpts[0].NextAttempt.Equal(mins(-5)) || !got.Due.Equal(mins(-5)) {
			t.Errorf("flush moved an overdue recipient: NextAttempt %v, Due %v", got.Rcpts[0].NextAttempt, got.Due)
		}
	})
	t.Run("unknown", func(t *testing.T) {
		e := newEnv(t)
		assertNotFound(t, "Flush", e.s.Flush(e.s.NewID()))
	})
}

// TestPendingMessageStaysDue checks the package invariant "the due index
// holds one key per message that is neither held nor finished" when a
// recipient's NextAttempt is set to the zero time (which Enqueue reads as
// "now", so a caller might well write it). Message.nextDue (spool.go:112-126)
// skips zero times while another pending recipient has one, and returns zero
// (no index entry) when all pending recipients have zero: the message then
// stays queued but is never due again.
func TestPendingMessageStaysDue(t *testing.T) {
	e := newEnv(t)
	m := e.enqueue(t, []byte("x"), rcptAt("a@example.net", t0.Add(time.Hour)))
	e.update(t, m.ID, func(m *spool.Message) { m.Rcpts[0].NextAttempt = time.Time{} })
	if n := e.dueKeysFor(t, m.ID); n != 1 {
		t.Errorf("pending, unheld message has %d due keys, want 1", n)
	}
	if !slices.Contains(e.due(t, t0.Add(1000*time.Hour), 10), m.ID) {
		t.Error("pending, unheld message is never due")
	}
}

// TestEnqueueInMemory: storebadger.Options.InMemory (for tests) holds the
// bodies the spool writes, around Badger's in-memory value limit
// (ValueThreshold, which an in-memory Badger cannot exceed and at which it
// once routed a value to the absent value log) and the body chunk size.
func TestEnqueueInMemory(t *testing.T) {
	for _, size := range []int{4 << 10, storebadger.ValueThreshold - 1, storebadger.ValueThreshold, storebadger.ValueThreshold + 1, storebadger.BodyChunk + 1} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			db, err := storebadger.Open("", storebadger.Options{InMemory: true})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			s := spool.New(storebadger.New(db, nil), newClock().Now)
			body := randBytes(size, 8)
			m := &spool.Message{ID: s.NewID(), From: "a@example.org", Rcpts: []spool.Recipient{rcpt("b@example.net")}}
			if err := s.Enqueue(m, bytes.NewReader(body)); err != nil {
				t.Fatalf("Enqueue of %d bytes in memory: %.200v", size, err)
			}
			r, err := s.Body(m.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := io.ReadAll(r); !bytes.Equal(got, body) {
				t.Error("body differs")
			}
		})
	}
}
