package mailbox_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	storebadger "github.com/relaymail/relay/internal/store/badger"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// fakeClock is a settable clock safe for concurrent use.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
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

// engines maps each test store to the engine under it, for deliver.
var engines sync.Map // *mailbox.Store -> *storebadger.Store

// openStore opens a mailbox store on a fresh Badger engine in a temporary
// directory, closed when the test ends.
func openStore(t *testing.T) (*mailbox.Store, *storebadger.DB, *fakeClock) {
	t.Helper()
	dir := t.TempDir()
	db, err := storebadger.Open(dir, storebadger.Options{})
	if err != nil {
		t.Fatalf("open database %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("close database: %v", err)
		}
	})
	clock := newClock()
	e := storebadger.New(db, clock.Now)
	s := mailbox.New(e, clock.Now)
	engines.Store(s, e)
	return s, db, clock
}

// addUser creates an account with the password "secret-"+addr.
func addUser(t *testing.T, s *mailbox.Store, addr string) {
	t.Helper()
	if err := s.AddUser(addr, "secret-"+addr); err != nil {
		t.Fatalf("AddUser(%q): %v", addr, err)
	}
}

// keys returns every key (and its value) under prefix.
func keys(t *testing.T, db *storebadger.DB, prefix string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			out[string(it.Item().KeyCopy(nil))] = v
		}
		return nil
	})
	if err != nil {
		t.Fatalf("iterate %q: %v", prefix, err)
	}
	return out
}

// checkNoBlobs fails unless no message record, blob chunk or reference count
// is left in the database.
func checkNoBlobs(t *testing.T, db *storebadger.DB) {
	t.Helper()
	for _, p := range []string{"m/x/", "m/b/", "m/r/"} {
		if k := keys(t, db, p); len(k) != 0 {
			t.Errorf("%d key(s) left under %q: %q", len(k), p, keyList(k))
		}
	}
}

func keyList(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// refcount reads the reference count of blob.
func refcount(t *testing.T, db *storebadger.DB, blob string) (uint32, bool) {
	t.Helper()
	v, ok := keys(t, db, "m/r/"+blob)["m/r/"+blob]
	if !ok {
		return 0, false
	}
	if len(v) != 4 {
		t.Fatalf("refcount of %s is %d bytes, want 4", blob, len(v))
	}
	return binary.BigEndian.Uint32(v), true
}

// readBody reads a message's body through Store.Open.
func readBody(t *testing.T, s *mailbox.Store, m mailbox.Message) []byte {
	t.Helper()
	b, err := io.ReadAll(s.Open(m))
	if err != nil {
		t.Fatalf("read body of UID %d (blob %s): %v", m.UID, m.Blob, err)
	}
	return b
}

// messages lists a mailbox, failing the test on error.
func messages(t *testing.T, s *mailbox.Store, user, box string) []mailbox.Message {
	t.Helper()
	ms, err := s.Messages(user, box)
	if err != nil {
		t.Fatalf("Messages(%s, %s): %v", user, box, err)
	}
	return ms
}

func getMailbox(t *testing.T, s *mailbox.Store, user, box string) *mailbox.Mailbox {
	t.Helper()
	mb, err := s.GetMailbox(user, box)
	if err != nil {
		t.Fatalf("GetMailbox(%s, %s): %v", user, box, err)
	}
	return mb
}

var deliverSeq atomic.Int64

// deliverErr files body in the INBOX of users in one commit, as the
// delivery loop does: a queued message whose recipients are marked
// delivered with a filing.
func deliverErr(s *mailbox.Store, body []byte, date time.Time, users ...string) error {
	v, _ := engines.Load(s)
	e := v.(*storebadger.Store)
	m := &spool.Message{ID: fmt.Sprintf("01DELIVER%010d", deliverSeq.Add(1)), Arrived: date, From: "sender@example.org"}
	for _, u := range users {
		m.Rcpts = append(m.Rcpts, spool.Recipient{Address: u, State: spool.Pending, NextAttempt: date})
	}
	if err := e.Enqueue(context.Background(), m, bytes.NewReader(body), spool.Event{Time: date, Event: spool.EventAccepted, ID: m.ID}); err != nil {
		return err
	}
	return e.Update(context.Background(), m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
		for i := range m.Rcpts {
			m.Rcpts[i].State = spool.Delivered
		}
		return spool.Effects{File: &spool.Filing{Accounts: users, Date: date}}, nil
	})
}

// deliver is deliverErr, failing the test on error; blob names the body
// for the test's own messages (the store picks the stored blob's ID).
func deliver(t *testing.T, s *mailbox.Store, blob string, body []byte, users ...string) {
	t.Helper()
	if err := deliverErr(s, body, time.Now(), users...); err != nil {
		t.Fatalf("deliver %s to %v: %v", blob, users, err)
	}
}

func TestAddUserDefaultMailboxes(t *testing.T) {
	t.Parallel()
	s, _, _ := openStore(t)
	addUser(t, s, "Alice@Example.TEST")

	want := map[string]string{
		"INBOX": "", "Sent": `\Sent`, "Drafts": `\Drafts`, "Trash": `\Trash`, "Junk": `\Junk`, "Archive": `\Archive`,
	}
	mbs, err := s.Mailboxes("alice@example.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(mbs) != len(want) {
		t.Errorf("%d mailboxes, want %d", len(mbs), len(want))
	}
	validity := map[uint32]string{}
	for _, mb := range mbs {
		use, ok := want[mb.Name]
		if !ok {
			t.Errorf("unexpected mailbox %q", mb.Name)
			continue
		}
		delete(want, mb.Name)
		if mb.SpecialUse != use {
			t.Errorf("%s: special use %q, want %q", mb.Name, mb.SpecialUse, use)
		}
		if mb.UIDNext != 1 {
			t.Errorf("%s: UIDNEXT %d, want 1", mb.Name, mb.UIDNext)
		}
		if mb.UIDValidity == 0 {
			t.Errorf("%s: UIDVALIDITY 0", mb.Name)
		}
		if other, dup := validity[mb.UIDValidity]; dup {
			t.Errorf("%s and %s share UIDVALIDITY %d", mb.Name, other, mb.UIDValidity)
		}
		validity[mb.UIDValidity] = mb.Name
		if mb.User != "alice@example.test" {
			t.Errorf("%s: user %q, want the lower-cased address", mb.Name, mb.User)
		}
		if mb.Messages != 0 || mb.Size != 0 {
			t.Errorf("%s: %d messages, %d bytes in a new mailbox", mb.Name, mb.Messages, mb.Size)
		}
	}
	for name := range want {
		t.Errorf("mailbox %s missing", name)
	}
}

func TestAddUserTwice(t *testing.T) {
	t.Parallel()
	s, _, _ := openStore(t)
	addUser(t, s, "bob@example.test")
	for _, addr := range []string{"bob@example.test", " BOB@example.test "} {
		if err := s.AddUser(addr, "another"); !errors.Is(err, mailbox.ErrUserExists) {
			t.Errorf("AddUser(%q) again: %v, want ErrUserExists", addr, err)
		}
	}
	// The failed attempts changed nothing: the old password still works.
	if _, err := s.Authenticate("bob@example.test", "secret-bob@example.test"); err != nil {
		t.Errorf("old password after a refused AddUser: %v", err)
	}
}

func TestAddUserBadAddress(t *testing.T) {
	t.Parallel()
	s, _, _ := openStore(t)
	for _, addr := range []string{
		"",
		"alice",
		"alice.example.test",
		"@example.test",
		"alice@",
		"alice+tag@example.test",
		"al ice@example.test",
		"alice@exa mple.test",
		"<alice@example.test>",
		"\"alice\"@example.test",
		"alice\t@example.test",
	} {
		t.Run(addr, func(t *testing.T) {
			if err := s.AddUser(addr, "pw"); !errors.Is(err, mailbox.ErrBadAddress) {
				t.Errorf("AddUser(%q): %v, want ErrBadAddress", addr, err)
			}
		})
	}
	if users, err := s.ListUsers(); err != nil || len(users) != 0 {
		t.Errorf("after bad addresses: ListUsers = %v, %v; want none", users, err)
	}
}

func TestAddUserBadPassword(t *testing.T) {
	t.Parallel()
	s, _, _ := openStore(t)
	for _, tc := range []struct {
		name, pw string
		ok       bool
	}{
		{"empty", "", false},
		{"73 bytes", strings.Repeat("x", 73), false},
		{"200 bytes", strings.Repeat("é", 100), false},
		{"72 bytes", strings.Repeat("x", 72), true},
		{"one byte", "x", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := strings.ReplaceAll(tc.name, " ", "-") + "@example.test"
			err := s.AddUser(addr, tc.pw)
			if tc.ok {
				if err != nil {
					t.Fatalf("AddUser with a %s password: %v", tc.name, err)
				}
				if _, err := s.Authenticate(addr, tc.pw); err != nil {
					t.Errorf("Authenticate with the %s password: %v", tc.name, err)
				}
				return
			}
			if !errors.Is(err, mailbox.ErrBadPassword) {
				t.Errorf("AddUser with a %s password: %v, want ErrBadPassword", tc.name, err)
			}
			if ok, _ := s.UserExists(addr); ok {
				t.Errorf("account %s made despite the bad password", addr)
			}
		})
	}
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	s, _, _ := openStore(t)
	if err := s.AddUser("carol@example.test", "correct horse"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, addr, pw string
		ok             bool
	}{
		{"good", "carol@example.test", "correct horse", true},
		{"good, address in capitals", "CAROL@Example.Test", "correct horse", true},
		{"bad password", "carol@example.test", "wrong horse", false},
		{"empty password", "carol@example.test", "", false},
		{"unknown user", "dave@example.test", "correct horse", false},
		{"plus address is not a login", "carol+x@example.test", "correct horse", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Authenticate(tc.addr, tc.pw)
			if tc.ok {
				if err != nil || got != "carol@example.test" {
					t.Errorf("Authenticate(%q) = %q, %v; want carol@example.test, nil", tc.addr, got, err)
				}
				return
			}
			// Both failures are the same value, so a caller cannot tell a
			// wrong user from a wrong password.
			if err != mailbox.ErrAuth || !errors.Is(err, mailbox.ErrAuth) {
				t.Errorf("Authenticate(%q, %q) = %q, %v; want exactly ErrAuth", tc.addr, tc.pw, got, err)
			}
			if got != "" {
				t.Errorf("failed Authenticate returned address %q", got)
			}
		})
	}
}

func TestSetPassword(t *testing.T) {
	t.Parallel()
	s, _, _ := openStore(t)
	if err := s.AddUser("erin@example.test", "old password"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPassword("Erin@Example.test", "new password"); err != nil {
		t.Fatalf("SetPassword: %v", err)
	}
	if _, err := s.Authenticate("erin@example.test", "old password"); !errors.Is(err, mailbox.ErrAuth) {
		t.Errorf("old password after SetPassword: %v, want ErrAuth", err)
	}
	if _, err := s.Authenticate("erin@example.test", "new password"); err != nil {
		t.Errorf("new password: %v", err)
	}
	if err := s.SetPassword("erin@example.test", ""); !errors.Is(err, mailbox.ErrBadPassword) {
		t.Errorf("SetPassword empty: %v, want ErrBadPassword", err)
	}
	if err := s.SetPassword("nobody@example.test", "whatever"); !errors.Is(err, mailbox.ErrNoUser) {
		t.Errorf("SetPassword for an unknown user: %v, want ErrNoUser", err)
	}
	if ok, _ := s.UserExists("nobody@example.test"); ok {
		t.Error("SetPassword made an account for an unknown user")
	}
	// The mailboxes are untouched by a password change.
	if mbs, err := s.Mailboxes("erin@example.test"); err != nil || len(mbs) != len(mailbox.DefaultMailboxes) {
		t.Errorf("mailboxes after SetPassword: %d, %v", len(mbs), err)
	}
}

func TestUserExists(t *testing.T) {
	t.Parallel()
	s, _, _ := openStore(t)
	addUser(t, s, "frank@example.test")
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"frank@example.test", true},
		{"FRANK@EXAMPLE.TEST", true},
		{"frank@example.org", false},
		{"frankie@example.test", false},
		{"frank+tag@example.test", false}, // UserExists takes resolved addresses
		{mailbox.Resolve("frank+tag@example.test"), true},
	} {
		got, err := s.UserExists(tc.addr)
		if err != nil || got != tc.want {
			t.Errorf("UserExists(%q) = %v, %v; want %v", tc.addr, got, err, tc.want)
		}
	}
}

func TestListUsers(t *testing.T) {
	t.Parallel()
	s, _, clock := openStore(t)
	if users, err := s.ListUsers(); err != nil || len(users) != 0 {
		t.Fatalf("ListUsers on an empty store = %v, %v", users, err)
	}
	for _, u := range []string{"zoe@example.test", "Adam@example.test", "mia@example.test"} {
		addUser(t, s, u)
		clock.Advance(time.Minute)
	}
	deliver(t, s, "blob", []byte("12345"), "mia@example.test", "zoe@example.test")
	deliver(t, s, "blob", []byte("1234567"), "mia@example.test")
	if _, _, err := s.Append("zoe@example.test", "Sent", strings.NewReader("123"), time.Now(), nil); err != nil {
		t.Fatal(err)
	}

	users, err := s.ListUsers()
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		addr     string
		messages int
		size     int64
	}{
		{"adam@example.test", 0, 0},
		{"mia@example.test", 2, 12},
		{"zoe@example.test", 2, 8},
	}
	if len(users) != len(want) {
		t.Fatalf("ListUsers = %+v, want %d users", users, len(want))
	}
	for i, w := range want {
		u := users[i]
		if u.Address != w.addr || u.Messages != w.messages || u.Size != w.size {
			t.Errorf("user %d = %s with %d messages, %d bytes; want %s, %d, %d",
				i, u.Address, u.Messages, u.Size, w.addr, w.messages, w.size)
		}
		if u.Created.IsZero() {
			t.Errorf("%s: no creation time", u.Address)
		}
	}
	if !users[0].Created.Equal(newClock().Now().Add(time.Minute)) {
		t.Errorf("adam created %v, want the fake clock's time at AddUser", users[0].Created)
	}
}

func TestDeleteUser(t *testing.T) {
	t.Parallel()
	s, db, _ := openStore(t)
	addUser(t, s, "gus@example.test")
	addUser(t, s, "empty@example.test")
	addUser(t, s, "keep@example.test")
	deliver(t, s, "blob", []byte("one"), "gus@example.test")
	deliver(t, s, "blob", []byte("two"), "gus@example.test")
	if _, _, err := s.Append("gus@example.test", "Archive", strings.NewReader("three"), time.Now(), []string{`\Seen`}); err != nil {
		t.Fatal(err)
	}
	deliver(t, s, "kept", []byte("kept"), "keep@example.test")
	keepBlob := messages(t, s, "keep@example.test", "INBOX")[0].Blob

	if err := s.DeleteUser("nobody@example.test", false); !errors.Is(err, mailbox.ErrNoUser) {
		t.Errorf("DeleteUser(unknown) = %v, want ErrNoUser", err)
	}
	if err := s.DeleteUser("gus@example.test", false); !errors.Is(err, mailbox.ErrHasMail) {
		t.Fatalf("DeleteUser(with mail, no force) = %v, want ErrHasMail", err)
	}
	if ms := messages(t, s, "gus@example.test", "INBOX"); len(ms) != 2 {
		t.Fatalf("refused DeleteUser left %d messages in INBOX, want 2", len(ms))
	}
	// An account without mail goes without force.
	if err := s.DeleteUser("empty@example.test", false); err != nil {
		t.Errorf("DeleteUser(no mail) = %v", err)
	}

	if err := s.DeleteUser("GUS@example.test", true); err != nil {
		t.Fatalf("DeleteUser(force) = %v", err)
	}
	for _, u := range []string{"gus@example.test", "empty@example.test"} {
		if ok, err := s.UserExists(u); ok || err != nil {
			t.Errorf("UserExists(%s) after delete = %v, %v", u, ok, err)
		}
		if mbs, err := s.Mailboxes(u); len(mbs) != 0 || err != nil {
			t.Errorf("Mailboxes(%s) after delete = %d, %v", u, len(mbs), err)
		}
		if _, err := s.Messages(u, "INBOX"); !errors.Is(err, mailbox.ErrNoMailbox) {
			t.Errorf("Messages(%s, INBOX) after delete: %v, want ErrNoMailbox", u, err)
		}
		if _, err := s.Authenticate(u, "secret-"+u); !errors.Is(err, mailbox.ErrAuth) {
			t.Errorf("Authenticate(%s) after delete: %v", u, err)
		}
	}
	for _, p := range []string{"m/u/gus", "m/n/gus", "m/u/empty", "m/n/empty"} {
		if k := keys(t, db, p); len(k) != 0 {
			t.Errorf("keys left under %q: %q", p, keyList(k))
		}
	}
	// Only keep@'s message, blob and refcount remain.
	if k := keys(t, db, "m/x/"); len(k) != 1 {
		t.Errorf("%d message records left, want 1 (keep@): %q", len(k), keyList(k))
	}
	if k := keys(t, db, "m/r/"); len(k) != 1 {
		t.Errorf("%d refcounts left, want 1 (keep@): %q", len(k), keyList(k))
	}
	for k := range keys(t, db, "m/b/") {
		if !strings.HasPrefix(k, "m/b/"+keepBlob) {
			t.Errorf("blob chunk %q left over", k)
		}
	}
	if ms := messages(t, s, "keep@example.test", "INBOX"); len(ms) != 1 || string(readBody(t, s, ms[0])) != "kept" {
		t.Errorf("keep@'s INBOX after deleting gus: %+v", ms)
	}

	if err := s.DeleteUser("keep@example.test", true); err != nil {
		t.Fatal(err)
	}
	checkNoBlobs(t, db)
	if users, err := s.ListUsers(); err != nil || len(users) != 0 {
		t.Errorf("ListUsers after deleting everyone = %+v, %v", users, err)
	}
}

func TestResolve(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"alice@example.test", "alice@example.test"},
		{"Alice@Example.TEST", "alice@example.test"},
		{"alice+news@example.test", "alice@example.test"},
		{"ALICE+News@example.test", "alice@example.test"},
		{"alice+a+b@example.test", "alice@example.test"},
		{"alice+@example.test", "alice@example.test"},
		{" alice+x@example.test ", "alice@example.test"},
		{"+tag@example.test", "+tag@example.test"}, // no local part before the +
		{"first.last@example.test", "first.last@example.test"},
		{"postmaster", "postmaster"},
	} {
		if got := mailbox.Resolve(tc.in); got != tc.want {
			t.Errorf("Resolve(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestDeliverStoresBodyOnce: one body to three users in one transaction
// is one blob with three references, readable byte for byte by each, and
// goes away with the last holder.
func TestDeliverStoresBodyOnce(t *testing.T) {
	t.Parallel()
	s, db, _ := openStore(t)
	users := []string{"u1@example.test", "u2@example.test", "u3@example.test"}
	for _, u := range users {
		addUser(t, s, u)
	}
	body := []byte("From: a@example.org\r\nSubject: shared\r\n\r\nstored once\r\n\x00\xff binary too\r\n")
	date := time.Date(2026, 2, 3, 4, 5, 6, 789, time.FixedZone("X", 3600))
	if err := deliverErr(s, body, date, users...); err != nil {
		t.Fatalf("deliver: %v", err)
	}
	blob := messages(t, s, users[0], "INBOX")[0].Blob

	for _, u := range users {
		ms := messages(t, s, u, "INBOX")
		if len(ms) != 1 {
			t.Fatalf("%s: %d messages in INBOX, want 1", u, len(ms))
		}
		m := ms[0]
		if m.UID != 1 || m.Blob != blob || m.Size != int64(len(body)) {
			t.Errorf("%s: UID %d, blob %s, size %d; want 1, %s, %d", u, m.UID, m.Blob, m.Size, blob, len(body))
		}
		if !m.Date.Equal(date.Truncate(time.Second)) {
			t.Errorf("%s: internal date %v, want %v", u, m.Date, date.Truncate(time.Second))
		}
		if got := readBody(t, s, m); !bytes.Equal(got, body) {
			t.Errorf("%s: body %q, want %q", u, got, body)
		}
		mb := getMailbox(t, s, u, "INBOX")
		if mb.UIDNext != 2 || mb.Messages != 1 || mb.Size != int64(len(body)) {
			t.Errorf("%s: INBOX UIDNEXT %d, %d messages, %d bytes; want 2, 1, %d", u, mb.UIDNext, mb.Messages, mb.Size, len(body))
		}
	}

	refs := keys(t, db, "m/r/")
	if len(refs) != 1 {
		t.Fatalf("%d refcount keys, want 1: %q", len(refs), keyList(refs))
	}
	if n, ok := refcount(t, db, blob); !ok || n != 3 {
		t.Errorf("refcount of %s = %d (present %v), want 3", blob, n, ok)
	}
	chunks := keys(t, db, "m/b/")
	if len(chunks) != 1 {
		t.Errorf("%d chunk keys, want 1: %q", len(chunks), keyList(chunks))
	}
	for k := range chunks {
		if !strings.HasPrefix(k, "m/b/"+blob) {
			t.Errorf("chunk key %q is not of blob %s", k, blob)
		}
	}

	// Deleting two holders keeps the blob for the third.
	for _, u := range users[:2] {
		if err := s.DeleteUser(u, true); err != nil {
			t.Fatalf("DeleteUser(%s): %v", u, err)
		}
	}
	if n, ok := refcount(t, db, blob); !ok || n != 1 {
		t.Errorf("refcount after deleting two holders = %d (present %v), want 1", n, ok)
	}
	ms := messages(t, s, users[2], "INBOX")
	if len(ms) != 1 {
		t.Fatalf("%s: %d messages, want 1", users[2], len(ms))
	}
	if got := readBody(t, s, ms[0]); !bytes.Equal(got, body) {
		t.Errorf("%s after the others left: body %q, want %q", users[2], got, body)
	}

	if err := s.DeleteUser(users[2], true); err != nil {
		t.Fatal(err)
	}
	checkNoBlobs(t, db)
}

func TestDeliverNoUsers(t *testing.T) {
	t.Parallel()
	s, db, _ := openStore(t)
	deliver(t, s, "blob", []byte("nobody"))
	checkNoBlobs(t, db)
}

func TestDeliverUnknownUser(t *testing.T) {
	t.Parallel()
	s, db, _ := openStore(t)
	addUser(t, s, "known@example.test")
	err := deliverErr(s, []byte("x"), time.Now(), "known@example.test", "ghost@example.test")
	if !errors.Is(err, spool.ErrNoAccount) {
		t.Errorf("delivery to an unknown user: %v, want spool.ErrNoAccount", err)
	}
	// The transaction failed as a whole.
	if ms := messages(t, s, "known@example.test", "INBOX"); len(ms) != 0 {
		t.Errorf("known@ got %d message(s) from a failed transaction", len(ms))
	}
	checkNoBlobs(t, db)
}

// TestUIDsNeverReused: UIDs grow within a mailbox, and an account deleted and
// made again gets mailboxes with new, greater UIDVALIDITY values, so no
// (UIDVALIDITY, UID) pair ever names two messages.
func TestUIDsNeverReused(t *testing.T) {
	t.Parallel()
	s, _, _ := openStore(t)
	const u = "hal@example.test"
	addUser(t, s, u)
	for i := range 5 {
		deliver(t, s, "blob", fmt.Appendf(nil, "message %d", i), u)
	}
	old := map[string]uint32{}
	mbs, err := s.Mailboxes(u)
	if err != nil {
		t.Fatal(err)
	}
	var maxOld uint32
	for _, mb := range mbs {
		old[mb.Name] = mb.UIDValidity
		maxOld = max(maxOld, mb.UIDValidity)
	}
	ms := messages(t, s, u, "INBOX")
	for i, m := range ms {
		if m.UID != uint32(i+1) {
			t.Errorf("message %d has UID %d, want %d", i, m.UID, i+1)
		}
	}
	if mb := getMailbox(t, s, u, "INBOX"); mb.UIDNext != 6 {
		t.Errorf("UIDNEXT after 5 deliveries = %d, want 6", mb.UIDNext)
	}

	if err := s.DeleteUser(u, true); err != nil {
		t.Fatal(err)
	}
	addUser(t, s, u)
	mbs, err = s.Mailboxes(u)
	if err != nil {
		t.Fatal(err)
	}
	for _, mb := range mbs {
		if mb.UIDValidity <= maxOld {
			t.Errorf("re-created %s: UIDVALIDITY %d, want above every old value (old %s had %d, max %d)",
				mb.Name, mb.UIDValidity, mb.Name, old[mb.Name], maxOld)
		}
	}
	deliver(t, s, "blob", []byte("after"), u)
	ms = messages(t, s, u, "INBOX")
	if len(ms) != 1 {
		t.Fatalf("re-created INBOX holds %d messages, want 1", len(ms))
	}
	if got := string(readBody(t, s, ms[0])); got != "after" {
		t.Errorf("re-created INBOX message body %q", got)
	}
}

// TestUIDValidityFollowsClock: UIDVALIDITY is at least the clock's Unix time
// and still grows when the clock goes back.
func TestUIDValidityFollowsClock(t *testing.T) {
	t.Parallel()
	s, _, clock := openStore(t)
	addUser(t, s, "ivy@example.test")
	first := getMailbox(t, s, "ivy@example.test", "INBOX").UIDValidity
	if now := uint32(clock.Now().Unix()); first < now {
		t.Errorf("UIDVALIDITY %d below the clock's %d", first, now)
	}
	clock.Advance(-24 * time.Hour)
	mb, err := s.CreateMailbox("ivy@example.test", "Later", "")
	if err != nil {
		t.Fatal(err)
	}
	if mb.UIDValidity <= first {
		t.Errorf("mailbox made after the clock went back: UIDVALIDITY %d, want above %d", mb.UIDValidity, first)
	}
}

func TestAppend(t *testing.T) {
	t.Parallel()
	s, _, _ := openStore(t)
	const u = "jo@example.test"
	addUser(t, s, u)
	inbox := getMailbox(t, s, u, "INBOX")
	sent := getMailbox(t, s, u, "Sent")

	var last uint32
	for i := range 4 {
		body := fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i)
		uv, uid, err := s.Append(u, "inbox", strings.NewReader(body), time.Now(), []string{`\Seen`})
		if err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		if uv != inbox.UIDValidity {
			t.Errorf("Append %d: UIDVALIDITY %d, want INBOX's %d", i, uv, inbox.UIDValidity)
		}
		if uid <= last {
			t.Errorf("Append %d: UID %d after %d", i, uid, last)
		}
		last = uid
	}
	uv, uid, err := s.Append(u, "Sent", strings.NewReader("sent"), time.Now(), nil)
	if err != nil || uv != sent.UIDValidity || uid != 1 {
		t.Errorf("Append to Sent = %d, %d, %v; want %d, 1, nil", uv, uid, err, sent.UIDValidity)
	}
	ms := messages(t, s, u, "INBOX")
	if len(ms) != 4 {
		t.Fatalf("%d messages in INBOX, want 4", len(ms))
	}
	for i, m := range ms {
		want := fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i)
		if got := string(readBody(t, s, m)); got != want {
			t.Errorf("UID %d: body %q, want %q", m.UID, got, want)
		}
		if len(m.Flags) != 1 || m.Flags[0] != `\Seen` {
			t.Errorf("UID %d: flags %q, want [\\Seen]", m.UID, m.Flags)
		}
	}
	if _, _, err := s.Append(u, "Nope", strings.NewReader("x"), time.Now(), nil); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("Append to a missing mailbox: %v, want ErrNoMailbox", err)
	}
	if _, _, err := s.Append("nobody@example.test", "INBOX", strings.NewReader("x"), time.Now(), nil); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("Append for an unknown user: %v, want ErrNoMailbox", err)
	}
}

// TestAppendConcurrent: concurrent APPENDs to one mailbox all succeed
// (conflicts are retried) with distinct UIDs and no gaps.
func TestAppendConcurrent(t *testing.T) {
	t.Parallel()
	for _, writers := range []int{8, 16, 40} {
		t.Run(fmt.Sprint(writers), func(t *testing.T) {
			t.Parallel()
			s, _, _ := openStore(t)
			const u = "kim@example.test"
			addUser(t, s, u)
			n := writers
			var wg sync.WaitGroup
			uids := make(chan uint32, n)
			start := make(chan struct{})
			for i := range n {
				wg.Go(func() {
					<-start
					_, uid, err := s.Append(u, "INBOX", strings.NewReader(fmt.Sprint(i)), time.Now(), nil)
					if err != nil {
						t.Errorf("Append %d: %v", i, err)
						return
					}
					uids <- uid
				})
			}
			close(start)
			wg.Wait()
			close(uids)
			seen := map[uint32]bool{}
			for uid := range uids {
				if seen[uid] {
					t.Errorf("UID %d given twice", uid)
				}
				seen[uid] = true
			}
			for uid := uint32(1); uid <= uint32(n); uid++ {
				if !seen[uid] {
					t.Errorf("UID %d missing", uid)
				}
			}
			if mb := getMailbox(t, s, u, "INBOX"); mb.Messages != uint32(n) || mb.UIDNext != uint32(n+1) {
				t.Errorf("INBOX: %d messages, UIDNEXT %d; want %d, %d", mb.Messages, mb.UIDNext, n, n+1)
			}
		})
	}
}

func TestCreateMailbox(t *testing.T) {
	t.Parallel()
	s, _, _ := openStore(t)
	const u = "lee@example.test"
	addUser(t, s, u)
	mb, err := s.CreateMailbox("LEE@example.test", "Projects/Relay", "")
	if err != nil {
		t.Fatalf("CreateMailbox: %v", err)
	}
	// RFC 9051 §6.3.4: CREATE does not subscribe; subscriptions are a
	// list of their own.
	if mb.Name != "Projects/Relay" || mb.User != u || mb.UIDNext != 1 || mb.Subscribed {
		t.Errorf("CreateMailbox = %+v", mb)
	}
	if got := getMailbox(t, s, u, "Projects/Relay"); got.ID != mb.ID || got.UIDValidity != mb.UIDValidity {
		t.Errorf("GetMailbox = %+v, want %+v", got, mb)
	}
	for _, name := range []string{"Projects/Relay", "INBOX", "inbox", "InBoX", "Sent"} {
		if _, err := s.CreateMailbox(u, name, ""); !errors.Is(err, mailbox.ErrMailboxExist) {
			t.Errorf("CreateMailbox(%q) again: %v, want ErrMailboxExist", name, err)
		}
	}
	if _, err := s.CreateMailbox("nobody@example.test", "X", ""); !errors.Is(err, mailbox.ErrNoUser) {
		t.Errorf("CreateMailbox for an unknown user: %v, want ErrNoUser", err)
	}
	// INBOX is found whatever its case; other names keep theirs.
	if _, err := s.GetMailbox(u, "iNbOx"); err != nil {
		t.Errorf("GetMailbox(iNbOx): %v", err)
	}
	if _, err := s.GetMailbox(u, "projects/relay"); !errors.Is(err, mailbox.ErrNoMailbox) {
		t.Errorf("GetMailbox(projects/relay): %v, want ErrNoMailbox", err)
	}
	mbs, err := s.Mailboxes(u)
	if err != nil || len(mbs) != len(mailbox.DefaultMailboxes)+1 {
		t.Errorf("Mailboxes = %d, %v; want %d", len(mbs), err, len(mailbox.DefaultMailboxes)+1)
	}
}

func TestCanonicalName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"inbox", "INBOX"},
		{"INBOX", "INBOX"},
		{"InBox", "INBOX"},
		{"inbox/Sub", "INBOX/Sub"},
		{"Inbox/sub/deeper", "INBOX/sub/deeper"},
		{"inbox/", "inbox/"},
		{"inboxes", "inboxes"},
		{"Sent", "Sent"},
		{"sent", "sent"},
		{"", ""},
	} {
		if got := mailbox.CanonicalName(tc.in); got != tc.want {
			t.Errorf("CanonicalName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestWatchNotify(t *testing.T) {
	t.Parallel()
	s, _, _ := openStore(t)
	const u = "max@example.test"
	addUser(t, s, u)

	ch, stop := s.Watch("MAX@example.test")
	other, stopOther := s.Watch("other@example.test")
	defer stopOther()
	select {
	case <-ch:
		t.Fatal("signal before any change")
	default:
	}

	s.Notify(u)
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatal("no signal after Notify")
	}
	// Signals coalesce: many changes, one pending signal.
	for range 5 {
		s.Notify(u)
	}
	<-ch
	select {
	case <-ch:
		t.Error("a second signal for coalesced changes")
	default:
	}
	// Append notifies after its commit.
	if _, _, err := s.Append(u, "INBOX", strings.NewReader("x"), time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatal("no signal after Append")
	}
	select {
	case <-other:
		t.Error("another user's watcher was signalled")
	default:
	}

	// Notify signals synchronously: once a watcher that stays has its
	// signal, one that was stopped would have had its own.
	stays, stopStays := s.Watch(u)
	defer stopStays()
	stop()
	s.Notify(u)
	select {
	case <-stays:
	case <-time.After(30 * time.Second):
		t.Fatal("no signal after Notify")
	}
	select {
	case <-ch:
		t.Error("signal after the watch was stopped")
	default:
	}
	stop() // stopping twice is harmless
}

// TestLargeBody: a body of several chunks plus a few bytes round-trips.
func TestLargeBody(t *testing.T) {
	t.Parallel()
	s, db, _ := openStore(t)
	const u = "ned@example.test"
	addUser(t, s, u)
	body := make([]byte, 3<<20+7)
	for i := range body {
		body[i] = byte(i*7 + i>>13)
	}
	deliver(t, s, "large", body, u)
	blob := messages(t, s, u, "INBOX")[0].Blob
	if _, _, err := s.Append(u, "Archive", bytes.NewReader(body), time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	for _, box := range []string{"INBOX", "Archive"} {
		ms := messages(t, s, u, box)
		if len(ms) != 1 {
			t.Fatalf("%s: %d messages, want 1", box, len(ms))
		}
		if ms[0].Size != int64(len(body)) {
			t.Errorf("%s: size %d, want %d", box, ms[0].Size, len(body))
		}
		if got := readBody(t, s, ms[0]); !bytes.Equal(got, body) {
			t.Errorf("%s: body of %d bytes differs from the %d stored", box, len(got), len(body))
		}
	}
	n := len(keys(t, db, "m/b/"+blob))
	if want := int(storebadger.NumChunks(int64(len(body)))); n != want || want != 4 {
		t.Errorf("%d chunks for the delivered blob, want %d (4)", n, want)
	}
	if err := s.DeleteUser(u, true); err != nil {
		t.Fatal(err)
	}
	checkNoBlobs(t, db)
}

// TestDeleteUserRacesDelivery: a delivery that commits while DeleteUser runs
// must either land before the delete (and be removed with the account) or
// fail; it must never leave a message record and a blob reference behind.
func TestDeleteUserRacesDelivery(t *testing.T) {
	t.Parallel()
	s, db, _ := openStore(t)
	const u = "race@example.test"
	for i := range 20 {
		addUser(t, s, u)
		stop, delivered := make(chan struct{}), make(chan struct{})
		var once sync.Once
		var wg sync.WaitGroup
		wg.Go(func() {
			defer once.Do(func() { close(delivered) })
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := deliverErr(s, []byte("x"), time.Now(), u)
				if err != nil && !errors.Is(err, spool.ErrNoAccount) {
					t.Errorf("deliver: %v", err)
					return
				}
				once.Do(func() { close(delivered) })
			}
		})
		// Deliveries are under way when DeleteUser starts.
		<-delivered
		err := s.DeleteUser(u, true)
		close(stop)
		wg.Wait()
		if err != nil {
			t.Fatalf("round %d: DeleteUser: %v", i, err)
		}
		if ok, _ := s.UserExists(u); ok {
			t.Fatalf("round %d: account still there after DeleteUser", i)
		}
		if x, r := keys(t, db, "m/x/"), keys(t, db, "m/r/"); len(x) != 0 || len(r) != 0 {
			t.Fatalf("round %d: %d message record(s) and %d blob refcount(s) orphaned by a delivery during DeleteUser",
				i, len(x), len(r))
		}
	}
}
