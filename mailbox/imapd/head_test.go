package imapd_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/relaymail/relay/mailbox/imapd"
)

// Messages whose header section is an edge case for keeping it apart from
// the body.
var headEdgeCases = []string{
	"Subject: lf only\nFrom: a@example.net\n\nbody\n",
	"Subject: all header, no body\r\nFrom: a@example.net\r\n",
	"Subject: all header, no line end",
	"\r\nno header at all\r\n",
	"Subject: folded\r\n over two lines\r\nX-Tag: needle\r\n\r\nbody\r\n\r\nSubject: not a header\r\n",
	"Subject: =?utf-8?q?K=C3=A4se?=\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\npart\r\n--b--\r\n",
	"X-Big: " + strings.Repeat("x", 40<<10) + "\r\nSubject: longer than the stored header limit\r\n\r\nbody\r\n",
}

// FETCH and SEARCH answer the same whether a message's header section was
// stored apart (new deliveries and APPENDs) or must be read from the body
// (messages stored before, or headers over the limit).
func TestStoredHeaderSameAnswers(t *testing.T) {
	ts := startServer(t, imapd.Config{})
	bodies := ts.appendSamples(t)
	for _, b := range headEdgeCases {
		ts.deliver(t, []byte(b))
		bodies = append(bodies, []byte(b))
	}
	cmds := []string{
		"UID FETCH 1:* (ENVELOPE RFC822.SIZE BODY.PEEK[HEADER] BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)])",
		"UID FETCH 1:* (BODY.PEEK[HEADER]<2.10> BODY.PEEK[TEXT] BODY.PEEK[1.MIME] BINARY.PEEK[] BODYSTRUCTURE)",
		"UID FETCH 1:* (BODY.PEEK[])",
		"UID SEARCH SUBJECT header",
		"UID SEARCH SUBJECT käse",
		"UID SEARCH OR FROM example.net HEADER X-Tag needle",
		"UID SEARCH TEXT needle",
		"UID SEARCH NOT HEADER Subject \"\"",
		// Across a folded line, in another case.
		"UID SEARCH SUBJECT \"FOLDED over\"",
		"UID SEARCH SUBJECT \"d over t\"",
		"UID SEARCH NOT SUBJECT \"no such words\"",
		"UID SEARCH HEADER X-Tag NEEDLE",
	}
	answers := func() []string {
		rc := rawLogin(t, ts.addr)
		rc.ok("SELECT INBOX")
		var out []string
		for _, cmd := range cmds {
			u := rc.ok(cmd)
			out = append(out, strings.Join(u, "\n"))
		}
		rc.ok("LOGOUT")
		return out
	}
	stored := answers()

	// Every message but the one with the long header has its header kept
	// apart; take them away, as in a database from before they were.
	heads := 0
	err := ts.db.Update(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("m/h/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			heads++
			if err := txn.Delete(it.Item().KeyCopy(nil)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if heads != len(bodies)-1 {
		t.Fatalf("%d stored headers, want %d", heads, len(bodies)-1)
	}
	fromBody := answers()
	for i := range cmds {
		if stored[i] != fromBody[i] {
			t.Errorf("%s:\nwith stored headers:\n%s\nfrom the bodies:\n%s", cmds[i], stored[i], fromBody[i])
		}
	}
	// And the answers are those of the messages as sent.
	for i, b := range bodies {
		if !strings.Contains(stored[2], string(b)) {
			t.Errorf("BODY[] of message %d is not what was stored", i+1)
		}
	}
	for i, want := range map[int]string{3: "SEARCH 6 7 11", 4: "SEARCH 10", 8: "SEARCH 9", 9: "SEARCH 9", 11: "SEARCH 9"} {
		if !strings.Contains(stored[i], want) {
			t.Errorf("%s = %q, want %q", cmds[i], stored[i], want)
		}
	}
}

// A field after 60 KiB of header, more than the store keeps apart, is
// found by BODY[HEADER.FIELDS], ENVELOPE and SEARCH HEADER (the first
// search of a field, the one that fills the field cache and one answered
// from it), in a small message and in one read from the store in pieces.
func TestFieldAfterLongHeader(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	var head strings.Builder
	head.WriteString("From: a@example.net\r\n")
	for i := 0; head.Len() < 60<<10; i++ {
		fmt.Fprintf(&head, "X-Filler-%d: %s\r\n", i, strings.Repeat("f", 60))
	}
	head.WriteString("Subject: late subject\r\nX-Late: v\r\n\r\n")
	ts.deliver(t, []byte(head.String()+"body\r\n"))
	if _, _, err := ts.boxes.Append(testUser, "INBOX", strings.NewReader(head.String()+strings.Repeat("body\r\n", 100<<10)), time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	rc := rawLogin(t, ts.addr)
	rc.ok("EXAMINE INBOX")
	for _, uid := range []int{1, 2} {
		u := rc.ok(fmt.Sprintf("UID FETCH %d (BODY.PEEK[HEADER.FIELDS (X-Late)] ENVELOPE)", uid))
		if len(find(u, "X-Late: v\r\n\r\n", `"late subject"`)) != 1 {
			t.Errorf("UID %d: FETCH HEADER.FIELDS (X-Late) ENVELOPE: %.300q", uid, u)
		}
	}
	for i := range 3 {
		if got := searchLine(t, rc, "UID SEARCH HEADER X-Late v"); got != "1 2" {
			t.Errorf("SEARCH HEADER X-Late v, time %d: %q, want 1 2", i+1, got)
		}
	}
}
