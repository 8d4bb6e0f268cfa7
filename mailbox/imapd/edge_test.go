package imapd_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/relaymail/relay/mailbox/imapd"
)

// A message larger than the store's 1 MiB chunks and the 256 KiB in-memory
// threshold streams back byte for byte, whole and in partials that cross a
// chunk boundary.
func TestLargeMessage(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	var b bytes.Buffer
	b.WriteString("From: big@example.net\r\nSubject: big one\r\n\r\n")
	r := rand.New(rand.NewPCG(1, 2))
	for b.Len() < 2<<20+12345 {
		fmt.Fprintf(&b, "line %d %016x needle-%d\r\n", b.Len(), r.Uint64(), b.Len()%7)
	}
	body := b.Bytes()
	if _, _, err := ts.boxes.Append(testUser, "INBOX", bytes.NewReader(body), time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	c := ts.login(t, nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	whole := &imap.FetchItemBodySection{Peek: true}
	part := &imap.FetchItemBodySection{Peek: true, Partial: &imap.SectionPartial{Offset: 1<<20 - 10, Size: 20}}
	buf := fetchOne(t, c, imap.SeqSetNum(1), &imap.FetchOptions{RFC822Size: true, BodySection: []*imap.FetchItemBodySection{whole}})
	if buf.RFC822Size != int64(len(body)) || !bytes.Equal(buf.FindBodySection(whole), body) {
		t.Errorf("BODY[] of a %d-byte message: size %d, equal %v", len(body), buf.RFC822Size, bytes.Equal(buf.FindBodySection(whole), body))
	}
	buf = fetchOne(t, c, imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{part}})
	if got := buf.FindBodySection(part); !bytes.Equal(got, body[1<<20-10:1<<20+10]) {
		t.Errorf("BODY[]<%d.20> = %q, want %q", 1<<20-10, got, body[1<<20-10:1<<20+10])
	}
	_, text := split(body)
	if got := section(t, c, 1, &imap.FetchItemBodySection{Specifier: imap.PartSpecifierText, Peek: true}); !bytes.Equal(got, text) {
		t.Errorf("BODY[TEXT] of the large message differs (%d bytes, want %d)", len(got), len(text))
	}
	data, err := c.Search(&imap.SearchCriteria{Body: []string{"needle-3"}, Larger: 2 << 20}, nil).Wait()
	if err != nil || !slices.Equal(data.AllSeqNums(), []uint32{1}) {
		t.Errorf("SEARCH BODY in the large message: %v %v", data, err)
	}
}

// Odd but legal commands.
func TestEdgeCases(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	rc := rawLogin(t, ts.addr)
	uv := respNum(rc.ok("SELECT INBOX"), `UIDVALIDITY (\d+)`)

	t.Run("system flags in any case", func(t *testing.T) {
		rc.ok(`STORE 1 +FLAGS.SILENT (\DELETED \seen)`)
		if got := searchLine(t, rc, "SEARCH DELETED SEEN"); got != "1" {
			t.Errorf("SEARCH DELETED SEEN after STORE (\\DELETED \\seen): %q", got)
		}
		u := rc.ok("STATUS INBOX (DELETED UNSEEN)")
		if len(find(u, "DELETED 1", "UNSEEN 3")) != 1 {
			t.Errorf("STATUS after STORE (\\DELETED \\seen): %q, want DELETED 1 UNSEEN 3", u)
		}
		rc.ok(`STORE 1 -FLAGS.SILENT (\Deleted \Seen)`)
	})

	t.Run("copy and move within one mailbox", func(t *testing.T) {
		u, st := rc.run("COPY 1 INBOX")
		if want := fmt.Sprintf("OK [COPYUID %d 1 5]", uv); !strings.HasPrefix(st, want) || !hasResp(u, "* 5 EXISTS") {
			t.Errorf("COPY 1 INBOX: %q %q, want EXISTS 5 and %s", u, st, want)
		}
		u, _ = rc.run("MOVE 1 INBOX")
		if want := fmt.Sprintf("* OK [COPYUID %d 1 6]", uv); len(find(u, want)) != 1 || !hasResp(u, "* 1 EXPUNGE") || !hasResp(u, "* 5 EXISTS") {
			t.Errorf("MOVE 1 INBOX: %q, want COPYUID, * 1 EXPUNGE and * 5 EXISTS", u)
		}
		if got := searchLine(t, rc, "UID SEARCH ALL"); got != "2 3 4 5 6" {
			t.Errorf("UIDs after COPY and MOVE into INBOX: %q", got)
		}
		if n := respNum(rc.ok("STATUS INBOX (MESSAGES)"), `MESSAGES (\d+)`); n != 5 {
			t.Errorf("STATUS MESSAGES %d, want 5", n)
		}
	})

	t.Run("modified UTF-7 names", func(t *testing.T) {
		rc.ok(`CREATE "Entw&APw-rfe"`)
		l := parseList(t, rc.ok(`LIST "" "Entw*"`))
		if _, ok := l["Entw&APw-rfe"]; !ok || len(l) != 1 {
			t.Errorf("LIST after CREATE Entw&APw-rfe: %v", names(l))
		}
		if u := rc.ok(`STATUS "Entw&APw-rfe" (MESSAGES)`); len(find(u, "MESSAGES 0")) != 1 {
			t.Errorf("STATUS Entw&APw-rfe: %q", u)
		}
		c := ts.login(t, nil)
		if _, err := c.Status("Entwürfe", &imap.StatusOptions{NumMessages: true}).Wait(); err != nil {
			t.Errorf("imapclient STATUS Entwürfe: %v", err)
		}
	})

	t.Run("BODY without extension data", func(t *testing.T) {
		u := rc.ok("UID FETCH 2 (BODY)") // the multipart sample
		if len(u) != 1 || !strings.Contains(u[0], "BODY ((") {
			t.Fatalf("FETCH BODY: %q", u)
		}
		if strings.Contains(strings.ToLower(u[0]), "attachment") {
			t.Errorf("FETCH BODY carries extension data (disposition): %q", u[0])
		}
	})

	t.Run("empty mailbox", func(t *testing.T) {
		rc.ok("SELECT Drafts")
		if u := rc.ok("SEARCH ALL"); !slices.Equal(u, []string{"* SEARCH"}) {
			t.Errorf("SEARCH ALL in an empty mailbox: %q", u)
		}
		if u, st := rc.run("UID FETCH 1:* (FLAGS)"); !strings.HasPrefix(st, "OK") || len(u) != 0 {
			t.Errorf("UID FETCH 1:* in an empty mailbox: %q %q", u, st)
		}
		rc.ok("EXPUNGE")
		rc.ok("SELECT INBOX")
	})

	// RFC 3501 §2.3.2: \Recent is set by the server only. The first
	// session to select the mailbox holds the new message as \Recent;
	// a later one must not see it.
	t.Run("APPEND with \\Recent", func(t *testing.T) {
		rc.appendLit("Junk", `(\Recent \Seen)`, sample(t, "plain.eml"))
		rawLogin(t, ts.addr).ok("SELECT Junk")
		other := rawLogin(t, ts.addr)
		other.ok("EXAMINE Junk")
		if u := other.ok("FETCH 1 (FLAGS)"); len(find(u, `\Recent`)) != 0 {
			t.Errorf(`APPEND Junk (\Recent \Seen) stored \Recent as a permanent flag: an EXAMINE session sees %q`, u)
		}
	})
}

// RFC 3501 §9 (seq-number): a sequence number above the message count
// gets a tagged BAD, in every command that takes one, and changes nothing;
// a UID above the highest one is no error (RFC 3501 §6.4.8).
func TestSequenceNumberOutOfRange(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	rc := rawLogin(t, ts.addr)
	rc.ok("SELECT INBOX")
	for _, cmd := range []string{
		"FETCH 99 (FLAGS)",
		"FETCH 2:99 (FLAGS)",
		`STORE 5 +FLAGS (\Deleted)`,
		"COPY 1,5 Trash",
		"MOVE 5 Trash",
	} {
		if u, st := rc.run(cmd); !strings.HasPrefix(st, "BAD") || len(u) != 0 {
			t.Errorf("%s on a 4-message mailbox: %q %q, want BAD and no data", cmd, u, st)
		}
	}
	if u, st := rc.run("UID FETCH 99 (FLAGS)"); !strings.HasPrefix(st, "OK") || len(u) != 0 {
		t.Errorf("UID FETCH 99: %q %q, want OK and no data", u, st)
	}
	if got := searchLine(t, rc, "SEARCH DELETED"); got != "" {
		t.Errorf("after the refused STORE, SEARCH DELETED = %q", got)
	}
	if n := respNum(rc.ok("STATUS Trash (MESSAGES)"), `MESSAGES (\d+)`); n != 0 {
		t.Errorf("after the refused COPY and MOVE, Trash holds %d messages", n)
	}
}

// Several writers and an idler at once: the idler's view (its EXISTS and
// EXPUNGE stream as imapclient tracks it) ends equal to the mailbox.
func TestConcurrentSessions(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendN(t, "INBOX", 20)
	upd := newUpdates()
	idler := ts.login(t, &imapclient.Options{UnilateralDataHandler: upd.handler()})
	if _, err := idler.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := idler.Idle()
	if err != nil {
		t.Fatal(err)
	}

	var writers []*rawConn
	for range 3 {
		w := rawLogin(t, ts.addr)
		w.ok("SELECT INBOX")
		writers = append(writers, w)
	}
	var wg sync.WaitGroup
	for i, w := range writers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(i), 7))
			for j := range 15 {
				switch r.IntN(4) {
				case 0:
					w.appendLit("INBOX", "", []byte(fmt.Sprintf("Subject: w%d-%d\r\n\r\nx\r\n", i, j)))
				case 1:
					w.run(fmt.Sprintf(`STORE %d +FLAGS.SILENT (\Deleted)`, 1+r.IntN(5)))
					w.run("EXPUNGE")
				case 2:
					w.run(fmt.Sprintf(`STORE %d +FLAGS ($K%d)`, 1+r.IntN(10), j))
				case 3:
					w.run("MOVE 1 Trash")
				}
				ts.deliver(t, []byte(fmt.Sprintf("Subject: d%d-%d\r\n\r\ny\r\n", i, j)))
			}
		})
	}
	// Every change has committed and been published to the idler's
	// subscription; IDLE or the NOOP after it reports what is left.
	wg.Wait()
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := idler.Noop().Wait(); err != nil {
		t.Fatal(err)
	}

	fresh := rawLogin(t, ts.addr)
	fresh.ok("EXAMINE INBOX")
	want := searchLine(t, fresh, "UID SEARCH ALL")
	n := uint32(len(strings.Fields(want)))
	if got := idler.Mailbox().NumMessages; got != n {
		t.Fatalf("idler counts %d messages, the mailbox has %d", got, n)
	}
	msgs, err := idler.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, m := range msgs {
		if m.SeqNum != uint32(i+1) {
			t.Errorf("FETCH 1:* answer %d has seq %d", i, m.SeqNum)
		}
		got = append(got, fmt.Sprint(m.UID))
	}
	if strings.Join(got, " ") != want {
		t.Errorf("idler's sequence map %q, mailbox %q", strings.Join(got, " "), want)
	}
}
