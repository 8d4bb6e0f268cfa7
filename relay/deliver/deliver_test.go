package deliver_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	storebadger "github.com/relaymail/relay/internal/store/badger"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/relay/deliver"
	"github.com/relaymail/relay/spool"
)

// fakeClock is a settable clock safe for concurrent use.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is one relay's state: a Badger database in a temporary directory with
// the spool and the mailbox store on it, all on one fake clock.
type env struct {
	dir   string
	clock *fakeClock
	db    *storebadger.DB
	sp    *spool.Spool
	boxes *mailbox.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{dir: t.TempDir(), clock: &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}}
	e.open(t)
	t.Cleanup(func() {
		if e.db != nil {
			if err := e.db.Close(); err != nil {
				t.Errorf("close database: %v", err)
			}
		}
	})
	return e
}

func (e *env) open(t *testing.T) {
	t.Helper()
	db, err := storebadger.Open(e.dir, storebadger.Options{})
	if err != nil {
		t.Fatalf("open database %s: %v", e.dir, err)
	}
	e.db = db
	engine := storebadger.New(db, e.clock.Now)
	e.sp = spool.New(engine, e.clock.Now)
	e.boxes = mailbox.New(engine, e.clock.Now)
}

// reopen closes the database and opens it again, as a restarted process
// would. Every loop on it must have stopped.
func (e *env) reopen(t *testing.T) {
	t.Helper()
	if err := e.db.Close(); err != nil {
		t.Fatalf("close database: %v", err)
	}
	e.db = nil
	e.open(t)
}

// newLoop returns a loop for the local domain example.test, with no remote
// transport.
func (e *env) newLoop() *deliver.Loop {
	cfg := deliver.Config{
		Domains:    []string{"example.test"},
		RetryFirst: 5 * time.Minute,
		RetryMax:   time.Hour,
	}
	return deliver.New(cfg, e.sp, e.boxes, nil, nil)
}

// run starts l in a goroutine and returns a function that stops it and waits
// for it to return; the test's cleanup stops it too.
func run(t *testing.T, l *deliver.Loop) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Errorf("delivery loop did not stop within 10 s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// nothingDue kicks l, waits until it has passed over the queue, and fails
// the test if that pass claimed a message: what says what should not be due.
func nothingDue(t *testing.T, l *deliver.Loop, what string) {
	t.Helper()
	n, ok := deliver.Look(l)
	if !ok {
		t.Fatalf("the delivery loop made no pass over the queue within 10 s of a kick")
	}
	if n != 0 {
		t.Fatalf("%s: the loop claimed %d messages", what, n)
	}
}

// waitFor polls cond every 10 ms for up to 10 s. cond returns whether it
// holds and, if not, what is the case instead (for the failure message).
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last state: %s", what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func addUsers(t *testing.T, boxes *mailbox.Store, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		if err := boxes.AddUser(a, "pw-"+a); err != nil {
			t.Fatalf("AddUser(%s): %v", a, err)
		}
	}
}

// enqueue queues body from sender@example.org to rcpts and returns its ID.
func enqueue(t *testing.T, sp *spool.Spool, body string, rcpts ...string) string {
	t.Helper()
	m := &spool.Message{ID: sp.NewID(), From: "sender@example.org"}
	for _, r := range rcpts {
		m.Rcpts = append(m.Rcpts, spool.Recipient{Address: r})
	}
	if err := sp.Enqueue(m, strings.NewReader(body)); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	return m.ID
}

// rcpt returns the state of one recipient of message id.
func rcpt(t *testing.T, sp *spool.Spool, id, addr string) spool.Recipient {
	t.Helper()
	m, err := sp.Get(id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	for _, r := range m.Rcpts {
		if r.Address == addr {
			return r
		}
	}
	t.Fatalf("message %s has no recipient %s", id, addr)
	return spool.Recipient{}
}

// gone reports whether message id has left the spool.
func gone(sp *spool.Spool, id string) (bool, string) {
	m, err := sp.Get(id)
	if errors.Is(err, spool.ErrNotFound) {
		return true, ""
	}
	if err != nil {
		return false, err.Error()
	}
	return false, fmt.Sprintf("still queued: %+v", m.Rcpts)
}

func inbox(t *testing.T, boxes *mailbox.Store, user string) []mailbox.Message {
	t.Helper()
	ms, err := boxes.Messages(user, "INBOX")
	if err != nil {
		t.Fatalf("Messages(%s, INBOX): %v", user, err)
	}
	return ms
}

func body(t *testing.T, boxes *mailbox.Store, m mailbox.Message) string {
	t.Helper()
	b, err := io.ReadAll(boxes.Open(m))
	if err != nil {
		t.Fatalf("read UID %d: %v", m.UID, err)
	}
	return string(b)
}

// countKeys counts the keys under prefix.
func countKeys(t *testing.T, db *storebadger.DB, prefix string) int {
	t.Helper()
	n := 0
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatalf("iterate %q: %v", prefix, err)
	}
	return n
}

// refcounts returns every blob's reference count.
func refcounts(t *testing.T, db *storebadger.DB) map[string]uint32 {
	t.Helper()
	out := map[string]uint32{}
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("m/r/"), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			if len(v) != 4 {
				return fmt.Errorf("refcount %s: %d bytes", it.Item().Key(), len(v))
			}
			out[string(it.Item().Key()[len("m/r/"):])] = binary.BigEndian.Uint32(v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkDeliveredOnce fails unless user's INBOX holds exactly one message,
// with UID 1 and the given body.
func checkDeliveredOnce(t *testing.T, boxes *mailbox.Store, user, want string) {
	t.Helper()
	ms := inbox(t, boxes, user)
	if len(ms) != 1 {
		t.Fatalf("%s: %d messages in INBOX, want exactly 1", user, len(ms))
	}
	if ms[0].UID != 1 {
		t.Errorf("%s: UID %d, want 1", user, ms[0].UID)
	}
	if got := body(t, boxes, ms[0]); got != want {
		t.Errorf("%s: body %q, want %q", user, got, want)
	}
}

// TestLocalDelivery: one message to three local users, a plus-address of one
// of them and a remote recipient.
func TestLocalDelivery(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	users := []string{"ann@example.test", "ben@example.test", "cat@example.test"}
	addUsers(t, e.boxes, users...)
	const msg = "From: sender@example.org\r\nSubject: hello\r\n\r\nto three local users\r\n"
	const remote = "far@example.org"
	id := enqueue(t, e.sp, msg, "ann@example.test", "Ben@Example.TEST", "cat@example.test", "ann+lists@example.test", remote)
	enqueued := e.clock.Now()
	watch, stopWatch := e.boxes.Watch("ann@example.test")
	defer stopWatch()

	l := e.newLoop()
	run(t, l)
	waitFor(t, "the remote recipient's first attempt", func() (bool, string) {
		m, err := e.sp.Get(id)
		if err != nil {
			return false, err.Error()
		}
		r := m.Rcpts[4]
		return r.Attempts > 0 && !m.Done() && m.Rcpts[0].State == spool.Delivered, fmt.Sprintf("%+v", m.Rcpts)
	})
	select {
	case <-watch:
	case <-time.After(5 * time.Second):
		t.Error("ann's watcher was not told of the delivery")
	}

	for _, u := range users {
		checkDeliveredOnce(t, e.boxes, u, msg)
	}
	refs := refcounts(t, e.db)
	if len(refs) != 1 {
		t.Fatalf("%d blobs for one message, want 1: %v", len(refs), refs)
	}
	for blob, n := range refs {
		if n != 3 {
			t.Errorf("blob %s has %d references, want 3", blob, n)
		}
		if c := countKeys(t, e.db, "m/b/"+blob); c != 1 || c != countKeys(t, e.db, "m/b/") {
			t.Errorf("%d chunks of blob %s, %d in all; want 1 and 1", c, blob, countKeys(t, e.db, "m/b/"))
		}
	}

	m, err := e.sp.Get(id)
	if err != nil {
		t.Fatalf("message with a pending remote recipient left the spool: %v", err)
	}
	for _, r := range m.Rcpts[:4] {
		if r.State != spool.Delivered || r.Attempts != 1 || !r.Reply.IsZero() {
			t.Errorf("local recipient %s: state %s, attempts %d, reply %q; want delivered, 1, none",
				r.Address, r.State, r.Attempts, r.Reply)
		}
	}
	r := m.Rcpts[4]
	if r.Address != remote || r.State != spool.Pending || r.Attempts != 1 {
		t.Errorf("remote recipient %s: state %s, attempts %d; want pending, 1", r.Address, r.State, r.Attempts)
	}
	if want := spool.TempReply("4.4.0", "remote delivery is not configured"); r.Reply != want {
		t.Errorf("remote recipient's reply %q, want %q", r.Reply, want)
	}
	if d := r.NextAttempt.Sub(enqueued); d < 270*time.Second || d > 330*time.Second {
		t.Errorf("remote recipient's next attempt %v after now, want 4.5 to 5.5 min", d)
	}
	if !m.Due.Equal(r.NextAttempt) {
		t.Errorf("message due %v, want the remote recipient's next attempt %v", m.Due, r.NextAttempt)
	}

	// Nothing more happens until the retry is due: no second copy.
	nothingDue(t, l, "before the remote recipient's retry was due")
	for _, u := range users {
		if n := len(inbox(t, e.boxes, u)); n != 1 {
			t.Errorf("%s: %d messages after a rescan, want 1", u, n)
		}
	}
	if r := rcpt(t, e.sp, id, remote); r.Attempts != 1 {
		t.Errorf("remote recipient tried %d times before its retry was due", r.Attempts)
	}

	// A message with local recipients only leaves the spool once delivered,
	// body and all.
	const msg2 = "Subject: second\r\n\r\nlocal only\r\n"
	id2 := enqueue(t, e.sp, msg2, "cat@example.test", "CAT+x@example.test")
	waitFor(t, "the local-only message to leave the spool", func() (bool, string) { return gone(e.sp, id2) })
	ms := inbox(t, e.boxes, "cat@example.test")
	if len(ms) != 2 || ms[1].UID != 2 || body(t, e.boxes, ms[1]) != msg2 {
		t.Errorf("cat's INBOX after the second message: %+v, want UIDs 1 and 2", ms)
	}
	if n := countKeys(t, e.db, "q/b/"+id2); n != 0 {
		t.Errorf("%d body chunks of the delivered message left in the spool", n)
	}
	if n, err := e.sp.Count(); err != nil || n != 1 {
		t.Errorf("spool holds %d messages (%v), want 1 (the remote one)", n, err)
	}
}

// TestUnknownUserAtDelivery: an account deleted after its recipient was
// accepted fails that recipient permanently with 5.1.1.
func TestUnknownUserAtDelivery(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addUsers(t, e.boxes, "gone@example.test", "stays@example.test")
	id := enqueue(t, e.sp, "hi\r\n", "gone+tag@example.test", "far@example.org")
	idBoth := enqueue(t, e.sp, "both\r\n", "gone@example.test", "stays@example.test")
	if err := e.boxes.DeleteUser("gone@example.test", false); err != nil {
		t.Fatal(err)
	}

	run(t, e.newLoop())
	waitFor(t, "the deleted user's recipient to fail", func() (bool, string) {
		r := rcpt(t, e.sp, id, "gone+tag@example.test")
		return r.State != spool.Pending, fmt.Sprintf("%+v", r)
	})
	r := rcpt(t, e.sp, id, "gone+tag@example.test")
	if want := spool.NewReply(550, "5.1.1", "no such user"); r.State != spool.Failed || r.Reply != want || r.Attempts != 1 {
		t.Errorf("recipient of a deleted account: state %s, attempts %d, reply %q; want failed, 1, %q",
			r.State, r.Attempts, r.Reply, want)
	}
	// The other local recipient of the second message is delivered, and the
	// message, all final, leaves the spool.
	waitFor(t, "the second message to leave the spool", func() (bool, string) { return gone(e.sp, idBoth) })
	checkDeliveredOnce(t, e.boxes, "stays@example.test", "both\r\n")
	if refs := refcounts(t, e.db); len(refs) != 1 {
		t.Errorf("blobs: %v, want one (stays@'s) with 1 reference", refs)
	} else {
		for _, n := range refs {
			if n != 1 {
				t.Errorf("stays@'s blob has %d references, want 1", n)
			}
		}
	}
}

// TestLocalDeliveryRetriedAfterFailure: a local delivery that fails before
// its commit is deferred with backoff, changes nothing in the mailbox, and
// the retry files the message exactly once.
func TestLocalDeliveryRetriedAfterFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addUsers(t, e.boxes, "dan@example.test")
	const failures = 3
	const msg = "Subject: flaky\r\n\r\nretried\r\n"
	id := enqueue(t, e.sp, msg, "dan@example.test")

	var calls atomic.Int32
	errInjected := errors.New("injected failure before commit")
	l := e.newLoop()
	l.SetBeforeCommit(func(got string) error {
		if got != id {
			t.Errorf("BeforeCommit for %s, want %s", got, id)
		}
		if calls.Add(1) <= failures {
			return errInjected
		}
		return nil
	})
	run(t, l)

	for k := 1; k <= failures; k++ {
		failedAt := e.clock.Now()
		waitFor(t, fmt.Sprintf("failure %d to be recorded", k), func() (bool, string) {
			r := rcpt(t, e.sp, id, "dan@example.test")
			return r.Attempts == k, fmt.Sprintf("%+v, %d BeforeCommit calls", r, calls.Load())
		})
		r := rcpt(t, e.sp, id, "dan@example.test")
		// The cause goes to the log; the recipient gets the fixed reply.
		if r.State != spool.Pending || r.Reply != spool.LocalTrouble {
			t.Errorf("after failure %d: state %s, reply %q; want pending, %q", k, r.State, r.Reply, spool.LocalTrouble)
		}
		base := time.Duration(5<<(k-1)) * time.Minute
		if d := r.NextAttempt.Sub(failedAt); d < base*9/10 || d > base*11/10 {
			t.Errorf("after failure %d: next attempt in %v, want %v ±10%%", k, d, base)
		}
		if n := len(inbox(t, e.boxes, "dan@example.test")); n != 0 {
			t.Fatalf("after failure %d: %d messages in INBOX, want 0", k, n)
		}
		if n := countKeys(t, e.db, "m/"); n != countKeys(t, e.db, "m/u/")+countKeys(t, e.db, "m/n/")+countKeys(t, e.db, "m/s/")+countKeys(t, e.db, "m/seq/") {
			t.Errorf("after failure %d: a failed delivery left message or blob keys", k)
		}
		// Not retried before it is due.
		nothingDue(t, l, fmt.Sprintf("after failure %d, before the retry was due", k))
		if c := calls.Load(); c != int32(k) {
			t.Fatalf("after failure %d: %d delivery attempts before the retry was due", k, c)
		}
		e.clock.Advance(r.NextAttempt.Sub(e.clock.Now()) + time.Second)
		l.Kick()
	}

	waitFor(t, "the message to be delivered and leave the spool", func() (bool, string) { return gone(e.sp, id) })
	checkDeliveredOnce(t, e.boxes, "dan@example.test", msg)
	if refs := refcounts(t, e.db); len(refs) != 1 {
		t.Errorf("blobs after %d failed attempts and one success: %v, want exactly one", failures, refs)
	}
	if c := calls.Load(); c != failures+1 {
		t.Errorf("%d delivery attempts, want %d", c, failures+1)
	}
}

// TestLocalDeliveryCrash: the process dies between the mailbox insert and
// the commit; after a restart on the same database the message is delivered
// exactly once.
func TestLocalDeliveryCrash(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// die is BeforeCommit's behaviour for the process that crashes;
		// stop cancels that process's loop.
		die func(stop func()) error
		// deferred says whether the failed attempt is on record (an error
		// is; a dead process records nothing).
		deferred bool
	}{
		{
			name:     "error then restart",
			die:      func(func()) error { return errors.New("injected failure before commit") },
			deferred: true,
		},
		{
			// The worker goroutine ends at the commit point, running only
			// its deferred calls (Badger discards the transaction): nothing
			// after BeforeCommit happens, as when the process is killed.
			name: "worker dies before commit",
			die: func(stop func()) error {
				stop()
				runtime.Goexit()
				return nil
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			users := []string{"eve@example.test", "fay@example.test"}
			addUsers(t, e.boxes, users...)
			const msg = "Subject: crash\r\n\r\nexactly once\r\n"
			id := enqueue(t, e.sp, msg, "eve@example.test", "fay+x@example.test", "fay@example.test")

			var calls atomic.Int32
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			l := e.newLoop()
			l.SetBeforeCommit(func(string) error {
				calls.Add(1)
				return tc.die(cancel)
			})
			done := make(chan struct{})
			go func() {
				defer close(done)
				l.Run(ctx)
			}()
			waitFor(t, "the first attempt", func() (bool, string) {
				if tc.deferred {
					r := rcpt(t, e.sp, id, "eve@example.test")
					return r.Attempts == 1, fmt.Sprintf("%+v", r)
				}
				return calls.Load() > 0, "BeforeCommit not called"
			})
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the crashing loop did not stop")
			}
			for _, u := range users {
				if n := len(inbox(t, e.boxes, u)); n != 0 {
					t.Fatalf("%s: %d messages before the commit point was passed, want 0", u, n)
				}
			}

			e.reopen(t)
			m, err := e.sp.Get(id)
			if err != nil {
				t.Fatalf("message after restart: %v", err)
			}
			for _, r := range m.Rcpts {
				want := 0
				if tc.deferred {
					want = 1
				}
				if r.State != spool.Pending || r.Attempts != want {
					t.Errorf("after restart %s: state %s, attempts %d; want pending, %d", r.Address, r.State, r.Attempts, want)
				}
			}
			e.clock.Advance(time.Hour)
			run(t, e.newLoop())
			waitFor(t, "delivery after the restart", func() (bool, string) { return gone(e.sp, id) })
			for _, u := range users {
				checkDeliveredOnce(t, e.boxes, u, msg)
			}
			if refs := refcounts(t, e.db); len(refs) != 1 {
				t.Errorf("blobs: %v, want exactly one", refs)
			} else {
				for _, n := range refs {
					if n != 2 {
						t.Errorf("blob has %d references, want 2", n)
					}
				}
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	const first, most = 5 * time.Minute, time.Hour
	near := func(got, want time.Duration) bool {
		return math.Abs(float64(got-want)) <= float64(time.Microsecond)
	}
	want := []time.Duration{5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 40 * time.Minute,
		time.Hour, time.Hour, time.Hour, time.Hour, time.Hour, time.Hour}
	for i, base := range want {
		n := i + 1
		for _, tc := range []struct {
			jitter, factor float64
		}{
			{0.5, 1.0},
			{0, 0.9},
			{0.25, 0.95},
			{math.Nextafter(1, 0), 1.1},
		} {
			exact := min(time.Duration(float64(base)*tc.factor), most)
			if got := deliver.Backoff(n, first, most, tc.jitter); !near(got, exact) {
				t.Errorf("Backoff(%d, jitter %v) = %v, want %v", n, tc.jitter, got, exact)
			}
		}
	}
	// Below one attempt counts as the first; huge counts do not overflow.
	for _, n := range []int{0, -1} {
		if got := deliver.Backoff(n, first, most, 0.5); got != first {
			t.Errorf("Backoff(%d) = %v, want %v", n, got, first)
		}
	}
	for _, n := range []int{63, 64, 1000, 1100, 1 << 20, math.MaxInt} {
		for _, j := range []float64{0, 0.5, 0.99} {
			wantD := min(time.Duration(float64(most)*(0.9+0.2*j)), most)
			if got := deliver.Backoff(n, first, most, j); !near(got, wantD) {
				t.Errorf("Backoff(%d, jitter %v) = %v, want %v", n, j, got, wantD)
			}
		}
	}
	// Any jitter in [0,1) keeps within ±10%.
	for j := 0.0; j < 1; j += 0.01 {
		got := deliver.Backoff(3, first, most, j)
		if got < 18*time.Minute || got >= 22*time.Minute {
			t.Errorf("Backoff(3, jitter %v) = %v, want in [18m, 22m)", j, got)
		}
	}
}

// TestConcurrentDeliveryToOneMailbox: many messages to the same two users,
// queued from several goroutines while the loop runs, each land exactly once
// with gap-free UIDs, though concurrent deliveries conflict on the mailboxes.
func TestConcurrentDeliveryToOneMailbox(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	users := []string{"gil@example.test", "hoa@example.test"}
	addUsers(t, e.boxes, users...)
	l := e.newLoop()
	run(t, l)

	const messages, senders = 200, 8
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := s; i < messages; i += senders {
				m := &spool.Message{ID: e.sp.NewID(), From: "sender@example.org",
					Rcpts: []spool.Recipient{{Address: users[0]}, {Address: users[1]}}}
				if err := e.sp.Enqueue(m, strings.NewReader(fmt.Sprintf("message %03d\r\n", i))); err != nil {
					t.Errorf("Enqueue %d: %v", i, err)
				}
			}
		})
	}
	wg.Wait()

	// The queue settles when nothing is due any more: every message is
	// delivered or, having failed, deferred.
	settled := func() (bool, string) {
		next, pending, err := e.sp.NextDue()
		if err != nil {
			return false, err.Error()
		}
		due := pending && !next.After(e.clock.Now())
		var got []string
		for _, u := range users {
			mb, err := e.boxes.GetMailbox(u, "INBOX")
			if err != nil {
				return false, err.Error()
			}
			got = append(got, fmt.Sprintf("%s has %d", u, mb.Messages))
		}
		return !due, fmt.Sprintf("due %v; %s", due, strings.Join(got, ", "))
	}
	waitFor(t, "the queue to settle", settled)
	deferred, err := e.sp.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(deferred) > 0 {
		// Conflicting deliveries to one INBOX exhaust spool.Update's 16
		// immediate retries; the loop then treats the conflict as a failed
		// attempt and defers the message by RetryFirst (5 min).
		t.Errorf("%d of %d messages deferred instead of delivered at once; first: %+v",
			len(deferred), messages, deferred[0].Rcpts[0])
	}
	// Exactly-once must hold either way: let the retries run.
	for round := 0; ; round++ {
		n, err := e.sp.Count()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if round == 10 {
			t.Fatalf("%d messages still queued after %d retry rounds", n, round)
		}
		e.clock.Advance(2 * time.Hour)
		l.Kick()
		waitFor(t, "the retries to settle", settled)
	}

	for _, u := range users {
		ms := inbox(t, e.boxes, u)
		if len(ms) != messages {
			t.Errorf("%s: %d messages, want %d", u, len(ms), messages)
		}
		bodies := map[string]bool{}
		for i, m := range ms {
			if m.UID != uint32(i+1) {
				t.Errorf("%s: message %d has UID %d, want %d", u, i, m.UID, i+1)
			}
			b := body(t, e.boxes, m)
			if bodies[b] {
				t.Errorf("%s: %q delivered twice", u, b)
			}
			bodies[b] = true
		}
		for i := range messages {
			if b := fmt.Sprintf("message %03d\r\n", i); !bodies[b] {
				t.Errorf("%s: %q missing", u, b)
			}
		}
		if mb, err := e.boxes.GetMailbox(u, "INBOX"); err != nil || mb.UIDNext != messages+1 || mb.Messages != messages {
			t.Errorf("%s INBOX: %+v, %v; want UIDNEXT %d and %d messages", u, mb, err, messages+1, messages)
		}
	}
	refs := refcounts(t, e.db)
	if len(refs) != messages {
		t.Errorf("%d blobs for %d messages", len(refs), messages)
	}
	for blob, n := range refs {
		if n != 2 {
			t.Errorf("blob %s has %d references, want 2", blob, n)
		}
	}
	if n := countKeys(t, e.db, "q/"); n != 0 {
		t.Errorf("%d spool keys left after every message was delivered", n)
	}
}

// TestLoopStopsWithoutWork: Run returns promptly on cancel, also when idle.
func TestLoopStopsWithoutWork(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l := e.newLoop()
	stop := run(t, l)
	nothingDue(t, l, "with an empty queue") // the loop is idle, waiting
	start := time.Now()
	stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Run took %v to return after cancel", d)
	}
}

// Messages to the same two accounts, named in opposite orders, take the
// per-account delivery locks in one order and so never wait on each other.
func TestDeliveryLocksOverlappingRecipients(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	users := []string{"ida@example.test", "jon@example.test", "kai@example.test"}
	addUsers(t, e.boxes, users...)
	const messages = 120
	for i := range messages {
		a, b := users[i%3], users[(i+1)%3]
		if i%2 == 1 {
			a, b = b, a
		}
		enqueue(t, e.sp, fmt.Sprintf("message %03d\r\n", i), a, b)
	}
	run(t, e.newLoop())
	waitFor(t, "every message delivered", func() (bool, string) {
		n, err := e.sp.Count()
		if err != nil {
			return false, err.Error()
		}
		return n == 0, fmt.Sprintf("%d messages queued", n)
	})
	for _, u := range users {
		if got := len(inbox(t, e.boxes, u)); got != messages*2/3 {
			t.Errorf("%s: %d messages, want %d", u, got, messages*2/3)
		}
	}
}
