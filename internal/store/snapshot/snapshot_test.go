package snapshot_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/store/snapshot"
	"github.com/relaymail/relay/internal/testkit"
	"github.com/relaymail/relay/internal/testkit/pgtest"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var ctx = context.Background()

// engine is what the round trip needs of an engine.
type engine interface {
	testkit.Engine
	snapshot.Source
	snapshot.Target
}

var t0 = time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)

// fill puts a bit of everything into the store through the mailbox and
// spool layers: accounts, mailboxes, shared bodies, UID gaps, flags, a
// subscription to a name that does not exist, settings and a queue with a
// deferred recipient.
func fill(t *testing.T, e engine) {
	t.Helper()
	clock := func() time.Time { return t0 }
	boxes := mailbox.New(e, clock)
	sp := spool.New(e, clock)
	for _, u := range []string{"alice@example.org", "bob@example.org"} {
		if err := boxes.AddUser(u, "password-"+u); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 7 {
		body := fmt.Sprintf("Subject: message %d\r\nFrom: x@example.net\r\n\r\nbody %d\r\n", i, i)
		flags := []string{}
		if i%2 == 0 {
			flags = append(flags, mailbox.FlagSeen, "$Label1")
		}
		if _, _, err := boxes.Append("alice@example.org", "INBOX", strings.NewReader(body), t0.Add(time.Duration(i)*time.Minute), flags); err != nil {
			t.Fatal(err)
		}
	}
	// Copies share bodies; expunges leave UID gaps.
	if _, err := boxes.Copy("alice@example.org", "INBOX", "Archive", []uint32{1, 2, 3}, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := boxes.SetFlags("alice@example.org", "INBOX", []uint32{2, 5}, mailbox.FlagsAdd, []string{mailbox.FlagDeleted}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := boxes.Expunge("alice@example.org", "INBOX", nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := boxes.CreateMailbox("bob@example.org", "Lists/go", ""); err != nil {
		t.Fatal(err)
	}
	if err := boxes.SetSubscribed("bob@example.org", "Lists/gone", true); err != nil {
		t.Fatal(err)
	}
	if err := testkit.Deliver(e, bytes.Repeat([]byte("large body\r\n"), 200000), t0, "bob@example.org"); err != nil {
		t.Fatal(err)
	}
	if first, _, err := boxes.ClaimRecent("bob@example.org", "INBOX"); err != nil || first != 1 {
		t.Fatal(first, err)
	}
	if err := boxes.SetDomains([]string{"example.org", "example.net"}); err != nil {
		t.Fatal(err)
	}
	m := &spool.Message{ID: "01SNAPSHOT0000000000000001", From: "alice@example.org", Params: spool.MailParams{Ret: "HDRS", EnvID: "e1"},
		Rcpts: []spool.Recipient{{Address: "carol@remote.test", Notify: []string{"DELAY", "FAILURE"}}, {Address: "dave@remote.test"}}}
	if err := sp.Enqueue(m, strings.NewReader("Subject: queued\r\n\r\nwaiting\r\n")); err != nil {
		t.Fatal(err)
	}
	err := sp.Update(m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
		m.Rcpts[0].Attempts, m.Rcpts[0].NextAttempt = 2, t0.Add(10*time.Minute)
		m.Rcpts[0].Reply, m.Rcpts[0].RemoteMTA, m.Rcpts[0].DelayNotified = spool.NewReply(451, "4.2.0", "busy"), "mx.remote.test", true
		m.Rcpts[1].State, m.Rcpts[1].Attempts = spool.Delivered, 1
		m.Hold = true
		return spool.Effects{}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// backup writes e's snapshot and returns the file with its entries.
func backup(t *testing.T, e engine) ([]byte, map[string]string) {
	t.Helper()
	var buf bytes.Buffer
	err := e.Snapshot(ctx, func(r snapshot.Reader) error {
		_, err := snapshot.Write(&buf, r, "test", t0)
		return err
	})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	entries := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		entries[h.Name] = string(b)
	}
	return buf.Bytes(), entries
}

// TestRoundTrip: Badger -> file -> PostgreSQL -> file -> Badger carries
// everything over unchanged, UIDs, UIDVALIDITY and blob sharing included,
// and what each store holds after a restore works as before.
func TestRoundTrip(t *testing.T) {
	b1, _ := testkit.Badger(t, nil)
	fill(t, b1)
	file1, want := backup(t, b1)
	if len(want) < 12 {
		t.Fatalf("the backup holds only %d entries", len(want))
	}

	pg := testkit.Postgres(t, nil)
	st, err := snapshot.Restore(ctx, bytes.NewReader(file1), pg)
	if err != nil {
		t.Fatalf("restore into PostgreSQL: %v (%v)", err, st)
	}
	if st.Accounts != 2 || st.Queued != 1 || st.Blobs != 7 || st.Messages != 9 {
		t.Errorf("restore stats %v", st)
	}
	file2, got := backup(t, pg)
	compare(t, "Badger -> PostgreSQL", want, got)

	b2, _ := testkit.Badger(t, nil)
	if _, err := snapshot.Restore(ctx, bytes.NewReader(file2), b2); err != nil {
		t.Fatalf("restore into Badger: %v", err)
	}
	_, got = backup(t, b2)
	compare(t, "PostgreSQL -> Badger", want, got)

	if _, err := snapshot.Restore(ctx, bytes.NewReader(file1), b2); err == nil {
		t.Error("a restore into a store that holds data succeeded")
	}
	for _, e := range []engine{pg, b2} {
		works(t, e)
	}
}

func compare(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	for name, w := range want {
		if name == "relay-snapshot.json" {
			continue
		}
		if g, ok := got[name]; !ok {
			t.Errorf("%s: %s is missing", what, name)
		} else if g != w {
			t.Errorf("%s: %s differs:\n got %.600s\nwant %.600s", what, name, g, w)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: %s appeared", what, name)
		}
	}
}

// works checks a restored store in use: logins, counts, new UIDs above the
// restored UIDNEXT, the queue as it was, a new mailbox's UIDVALIDITY above
// the restored ones.
func works(t *testing.T, e engine) {
	t.Helper()
	boxes := mailbox.New(e, nil)
	if _, err := boxes.Authenticate("alice@example.org", "password-alice@example.org"); err != nil {
		t.Errorf("login after restore: %v", err)
	}
	inbox, err := boxes.GetMailbox("alice@example.org", "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	if inbox.Messages != 5 || inbox.UIDNext != 8 || inbox.Unseen != 2 {
		t.Errorf("alice's INBOX after restore: %+v, want 5 messages, UIDNEXT 8, 2 unseen", inbox)
	}
	if _, uid, err := boxes.Append("alice@example.org", "INBOX", strings.NewReader("new\r\n"), time.Now(), nil); err != nil || uid != 8 {
		t.Errorf("append after restore: UID %d, %v; want 8", uid, err)
	}
	mb, err := boxes.CreateMailbox("alice@example.org", "Fresh", "")
	if err != nil {
		t.Fatal(err)
	}
	all, _ := boxes.Mailboxes("alice@example.org")
	for _, o := range all {
		if o.Name != "Fresh" && o.UIDValidity >= mb.UIDValidity {
			t.Errorf("new mailbox UIDVALIDITY %d not above restored %s's %d", mb.UIDValidity, o.Name, o.UIDValidity)
		}
	}
	sp := spool.New(e, nil)
	m, err := sp.Get("01SNAPSHOT0000000000000001")
	if err != nil {
		t.Fatal(err)
	}
	if !m.Hold || m.Rcpts[0].Attempts != 2 || m.Rcpts[0].Reply.String() != "451 4.2.0 busy" || m.Rcpts[1].State != spool.Delivered {
		t.Errorf("queued message after restore: %+v", m)
	}
	if err := sp.Release(m.ID); err != nil {
		t.Fatal(err)
	}
	if ls, err := sp.Claim(10, time.Minute); err != nil || len(ls) != 1 {
		t.Errorf("the restored message is not claimable once released: %v, %v", ls, err)
	}
	if d, _ := boxes.Domains(); len(d) != 2 {
		t.Errorf("settings after restore: domains %v", d)
	}
}
