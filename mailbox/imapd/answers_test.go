package imapd_test

// Exact exchanges for answers that RFC 3501, RFC 9051 and RFC 3516 pin
// down to the octet: partial BINARY, RECENT and UNSEEN at SELECT and
// EXAMINE, LIST patterns that are not modified UTF-7, NUL in a message,
// and keywords announced in FLAGS.

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/mailbox/imapd"
)

// fiveParts is a multipart message whose fifth part is base64 of
// "abcdefghij"; its first part's text looks like a BINARY item, which
// must pass through a literal untouched.
var fiveParts = strings.ReplaceAll(`From: a@example.net
Subject: five parts
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain

BINARY[5] ~{7}
--b
Content-Type: text/plain

two
--b
Content-Type: text/plain

three
--b
Content-Type: text/plain

four
--b
Content-Type: application/octet-stream
Content-Transfer-Encoding: base64

YWJjZGVmZ2hpag==
--b--
`, "\n", "\r\n")

// RFC 3516 §4.2, RFC 9051 §7.5.2: a partial BINARY answer names its
// origin, BINARY[part]<origin> ~{n}, as a partial BODY answer does.
func TestBinaryPartialOrigin(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	if _, _, err := ts.boxes.Append(testUser, "INBOX", strings.NewReader(fiveParts), time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	// A message large enough that its BODY[] goes out in several writes
	// before the BINARY item that follows it in the same response.
	big := strings.Replace(fiveParts, "two\r\n", strings.Repeat("padding line of text\r\n", 800), 1)
	if _, _, err := ts.boxes.Append(testUser, "INBOX", strings.NewReader(big), time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	rc := rawLogin(t, ts.addr)
	rc.ok("EXAMINE INBOX")
	for _, tc := range []struct{ cmd, want string }{
		{"FETCH 1 (BINARY.PEEK[5]<0.7>)", "* 1 FETCH (BINARY[5]<0> ~{7}\r\nabcdefg)"},
		{"FETCH 1 (BINARY.PEEK[5]<3.100>)", "* 1 FETCH (BINARY[5]<3> ~{7}\r\ndefghij)"},
		{"FETCH 1 (BINARY.PEEK[5]<20.5>)", "* 1 FETCH (BINARY[5]<20> ~{0}\r\n)"},
		{"FETCH 1 (BINARY.PEEK[5])", "* 1 FETCH (BINARY[5] ~{10}\r\nabcdefghij)"},
		{"FETCH 1 (BINARY.PEEK[5] BINARY.PEEK[5]<2.2>)", "* 1 FETCH (BINARY[5] ~{10}\r\nabcdefghij BINARY[5]<2> ~{2}\r\ncd)"},
		{"FETCH 1 (BINARY.PEEK[]<0.5>)", "* 1 FETCH (BINARY[]<0> ~{5}\r\nFrom:)"},
		{"FETCH 1 (BINARY.PEEK[1]<0.9> BINARY.SIZE[5])", "* 1 FETCH (BINARY[1]<0> ~{9}\r\nBINARY[5] BINARY.SIZE[5] 10)"},
		{"UID FETCH 1 (BODY.PEEK[] BINARY.PEEK[5]<0.7>)",
			fmt.Sprintf("* 1 FETCH (UID 1 BODY[] {%d}\r\n%s BINARY[5]<0> ~{7}\r\nabcdefg)", len(fiveParts), fiveParts)},
		{"FETCH 2 (BODY.PEEK[] BINARY.PEEK[5]<1.3>)",
			fmt.Sprintf("* 2 FETCH (BODY[] {%d}\r\n%s BINARY[5]<1> ~{3}\r\nbcd)", len(big), big)},
	} {
		if u := rc.ok(tc.cmd); !slices.Equal(u, []string{tc.want}) {
			t.Errorf("%s:\n got %.300q\nwant %.300q", tc.cmd, u, tc.want)
		}
	}
	// Several messages, each with its own items.
	u := rc.ok("FETCH 1:2 (BINARY.PEEK[5]<4.2>)")
	if want := []string{"* 1 FETCH (BINARY[5]<4> ~{2}\r\nef)", "* 2 FETCH (BINARY[5]<4> ~{2}\r\nef)"}; !slices.Equal(u, want) {
		t.Errorf("FETCH 1:2 (BINARY.PEEK[5]<4.2>): %q, want %q", u, want)
	}
	// What follows is framed as before.
	if u := rc.ok("FETCH 1 (BODY.PEEK[1])"); !slices.Equal(u, []string{"* 1 FETCH (BODY[1] {14}\r\nBINARY[5] ~{7})"}) {
		t.Errorf("FETCH after the partial BINARY items: %q", u)
	}
}

// RFC 3501 §6.3.2: EXAMINE reports \Recent as STATUS counts it and must not
// take it away; RFC 3501 §6.3.1: SELECT and EXAMINE name the first unseen
// message with OK [UNSEEN n], which IMAP4rev2 dropped (RFC 9051 appendix E).
func TestRecentAndUnseenAtSelect(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	for i, flags := range [][]string{{`\Seen`}, nil, nil} {
		body := fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i)
		if _, _, err := ts.boxes.Append(testUser, "INBOX", strings.NewReader(body), time.Now(), flags); err != nil {
			t.Fatal(err)
		}
	}
	status := func(rc *rawConn) []string { return rc.ok("STATUS INBOX (RECENT UNSEEN)") }
	wantSelect := func(u []string, recent int, unseen string) {
		t.Helper()
		if !hasResp(u, fmt.Sprintf("* %d RECENT", recent)) {
			t.Errorf("%q: want * %d RECENT", u, recent)
		}
		got := find(u, "[UNSEEN ")
		if unseen == "" && len(got) != 0 || unseen != "" && !slices.Equal(got, []string{unseen}) {
			t.Errorf("%q: UNSEEN response %q, want %q", u, got, unseen)
		}
	}

	a := rawLogin(t, ts.addr)
	if u := status(a); !slices.Equal(u, []string{"* STATUS INBOX (UNSEEN 2 RECENT 3)"}) {
		t.Fatalf("STATUS before any SELECT: %q", u)
	}
	wantSelect(a.ok("EXAMINE INBOX"), 3, "* OK [UNSEEN 2] First unseen message")
	if got := find(a.ok("FETCH 1:* (FLAGS)"), `\Recent`); len(got) != 3 {
		t.Errorf("EXAMINE session: %q carry \\Recent, want all 3", got)
	}
	if got := searchLine(t, a, "SEARCH RECENT"); got != "1 2 3" {
		t.Errorf("SEARCH RECENT under EXAMINE: %q, want 1 2 3", got)
	}
	if u := status(a); !slices.Equal(u, []string{"* STATUS INBOX (UNSEEN 2 RECENT 3)"}) {
		t.Errorf("STATUS after EXAMINE: %q, want RECENT 3: EXAMINE must not clear \\Recent", u)
	}

	// A message arriving while the mailbox is examined is recent there
	// too, and still for the next SELECT.
	ts.deliver(t, []byte("Subject: 4\r\n\r\nbody\r\n"))
	if u := a.ok("NOOP"); !hasResp(u, "* 4 EXISTS") || !hasResp(u, "* 4 RECENT") {
		t.Errorf("NOOP under EXAMINE after a delivery: %q, want 4 EXISTS, 4 RECENT", u)
	}

	b := rawLogin(t, ts.addr)
	wantSelect(b.ok("SELECT INBOX"), 4, "* OK [UNSEEN 2] First unseen message")
	if u := status(b); !slices.Equal(u, []string{"* STATUS INBOX (UNSEEN 3 RECENT 0)"}) {
		t.Errorf("STATUS after SELECT: %q, want RECENT 0 (claimed)", u)
	}

	// The next session sees nothing recent; once message 2 is seen, the
	// first unseen is 3; with everything seen there is no UNSEEN code.
	b.ok(`STORE 2 +FLAGS.SILENT (\Seen)`)
	c := rawLogin(t, ts.addr)
	wantSelect(c.ok("SELECT INBOX"), 0, "* OK [UNSEEN 3] First unseen message")
	wantSelect(c.ok("EXAMINE INBOX"), 0, "* OK [UNSEEN 3] First unseen message")
	b.ok(`STORE 1:* +FLAGS.SILENT (\Seen)`)
	wantSelect(c.ok("SELECT INBOX"), 0, "")

	// IMAP4rev2 has neither RECENT nor UNSEEN.
	b.ok(`STORE 4 -FLAGS.SILENT (\Seen)`)
	d := rawLogin(t, ts.addr)
	d.ok("ENABLE IMAP4rev2")
	if u := d.ok("SELECT INBOX"); len(find(u, "RECENT")) != 0 || len(find(u, "UNSEEN")) != 0 {
		t.Errorf("SELECT after ENABLE IMAP4rev2: %q, want no RECENT and no UNSEEN", u)
	}
}

// A LIST pattern or reference that is not modified UTF-7 (RFC 3501
// §5.1.3), or not UTF-8, gets BAD with a text that says so, never NO
// [SERVERBUG]; the session goes on.
func TestListInvalidPattern(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	const bad = "BAD [CLIENTBUG] invalid argument: a mailbox name or pattern that is not modified UTF-7, or a malformed sequence set, date or literal"
	for _, pre := range []string{"", "ENABLE IMAP4rev2"} {
		rc := rawLogin(t, ts.addr)
		if pre != "" {
			rc.ok(pre)
		}
		for _, cmd := range []string{
			`LIST "" "&Jjo"`,
			`LIST "" &Jjo`,
			`LIST "" "*&Jjo*"`,
			"LIST \"\" \"\xff\xfe\"",
			"LIST \"\" {2+}\r\n\xff\xfe",
			`LIST "&Jjo" "*"`,
			`LIST "" ("INBOX" "&Jjo")`,
			`LIST (SUBSCRIBED) "" "&Jjo"`,
			`LIST "" "&Jjo" RETURN (STATUS (MESSAGES))`,
			`LSUB "" "&Jjo"`,
		} {
			if u, st := rc.run(cmd); len(u) != 0 || st != bad {
				t.Errorf("%s %q: %q %q, want %q alone", pre, cmd, u, st, bad)
			}
			rc.ok("NOOP") // ten BADs in a row would end the session
		}
		// Valid modified UTF-7 that names nothing is no error.
		if u := rc.ok(`LIST "" "&Jjo-"`); len(u) != 0 {
			t.Errorf(`%s LIST "" "&Jjo-": %q, want no match`, pre, u)
		}
	}
}

// RFC 9051 §4.3 and RFC 3501 §9: a literal holds no NUL; only BINARY's
// literal8 does (RFC 3516). A message that APPEND brought with NUL in it
// is sent in BODY[] and RFC822 with 0x80 for each NUL, as Dovecot does, at
// the same size; BINARY[] sends the NUL.
func TestNULInMessage(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	msg := "From: a@example.net\r\nSubject: nul\r\n\r\nbefore\x00after\x00\r\n"
	hdr, text, _ := strings.Cut(msg, "\r\n\r\n")
	hdr += "\r\n\r\n"
	clean := strings.ReplaceAll(msg, "\x00", "\x80")
	cleanText := strings.ReplaceAll(text, "\x00", "\x80")
	rc := rawLogin(t, ts.addr)
	if _, st := rc.appendLit("INBOX", "", []byte(msg)); !strings.HasPrefix(st, "OK") {
		t.Fatalf("APPEND of a message with NUL: %q", st)
	}
	rc.ok("SELECT INBOX")
	lit := func(name, s string) string { return fmt.Sprintf("%s {%d}\r\n%s", name, len(s), s) }
	for _, tc := range []struct{ cmd, want string }{
		{"FETCH 1 (RFC822.SIZE BODY.PEEK[])", fmt.Sprintf("* 1 FETCH (RFC822.SIZE %d %s)", len(msg), lit("BODY[]", clean))},
		{"FETCH 1 (BODY.PEEK[TEXT])", "* 1 FETCH (" + lit("BODY[TEXT]", cleanText) + ")"},
		{"FETCH 1 (BODY.PEEK[1])", "* 1 FETCH (" + lit("BODY[1]", cleanText) + ")"},
		{"FETCH 1 (BODY.PEEK[]<40.8>)", "* 1 FETCH (" + lit("BODY[]<40>", clean[40:48]) + ")"},
		{"FETCH 1 (RFC822.HEADER)", "* 1 FETCH (" + lit("RFC822.HEADER", hdr) + ")"},
		{"FETCH 1 (BINARY.PEEK[])", fmt.Sprintf("* 1 FETCH (BINARY[] ~{%d}\r\n%s)", len(msg), msg)},
		{"FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])", fmt.Sprintf("* 1 FETCH (BINARY[1] ~{%d}\r\n%s BINARY.SIZE[1] %d)", len(text), text, len(text))},
	} {
		if u := rc.ok(tc.cmd); !slices.Equal(u, []string{tc.want}) {
			t.Errorf("%s:\n got %q\nwant %q", tc.cmd, u, []string{tc.want})
		}
	}
	// RFC822.TEXT and RFC822 set \Seen, which comes with them.
	for _, tc := range []struct{ cmd, want string }{
		{"FETCH 1 (RFC822.TEXT)", `* 1 FETCH (FLAGS (\Seen \Recent) ` + lit("RFC822.TEXT", cleanText) + ")"},
		{"FETCH 1 (RFC822)", `* 1 FETCH (FLAGS (\Seen \Recent) ` + lit("RFC822", clean) + ")"},
	} {
		if u := rc.ok(tc.cmd); !slices.Equal(u, []string{tc.want}) {
			t.Errorf("%s:\n got %q\nwant %q", tc.cmd, u, []string{tc.want})
		}
	}
	// The stored message is unchanged.
	if b := readStored(t, ts, 1); !bytes.Equal(b, []byte(msg)) {
		t.Errorf("stored message %q, want %q", b, msg)
	}
}

// readStored reads the INBOX message with the given UID from the store.
func readStored(t *testing.T, ts *testServer, uid uint32) []byte {
	t.Helper()
	mb, err := ts.boxes.GetMailbox(testUser, "INBOX")
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := ts.boxes.GetMessages(mb.ID, []uint32{uid})
	if err != nil || len(msgs) != 1 {
		t.Fatalf("GetMessages: %v %v", msgs, err)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(ts.boxes.Open(msgs[0])); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// RFC 3501 §7.2.6, RFC 9051 §7.3.5: FLAGS names the flags a mailbox uses.
// A new keyword is announced with FLAGS (and PERMANENTFLAGS in a read-write
// session) to every session that has the mailbox selected, before the
// first FETCH that shows it; SELECT lists the keywords in use.
func TestKeywordsAnnounced(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendN(t, "INBOX", 3)
	const sys = `\Seen \Answered \Flagged \Deleted \Draft`
	flags := func(kw string) string { return "* FLAGS (" + sys + kw + ")" }
	perm := func(kw string) string { return "* OK [PERMANENTFLAGS (" + sys + kw + ` \*)] Permanent flags` }

	a := rawLogin(t, ts.addr)
	if u := a.ok("SELECT INBOX"); !hasResp(u, flags("")) || !hasResp(u, perm("")) {
		t.Fatalf("SELECT: %q, want the system flags alone", u)
	}
	b := rawLogin(t, ts.addr)
	b.ok("SELECT INBOX")
	e := rawLogin(t, ts.addr)
	e.ok("EXAMINE INBOX")
	f := rawLogin(t, ts.addr)
	f.ok("SELECT INBOX")

	// a holds the messages as \Recent (it selected first).
	want := []string{flags(" $keyword1"), perm(" $keyword1"), `* 1 FETCH (FLAGS ($keyword1 \Recent))`}
	if u := a.ok("STORE 1 +FLAGS ($keyword1)"); !slices.Equal(u, want) {
		t.Errorf("STORE of a new keyword:\n got %q\nwant %q", u, want)
	}
	want = []string{flags(" $keyword1"), perm(" $keyword1"), `* 1 FETCH (UID 1 FLAGS ($keyword1))`}
	if u := b.ok("NOOP"); !slices.Equal(u, want) {
		t.Errorf("another session's NOOP:\n got %q\nwant %q", u, want)
	}
	// Read-only: FLAGS, and no PERMANENTFLAGS (there are none).
	want = []string{flags(" $keyword1"), `* 1 FETCH (UID 1 FLAGS ($keyword1))`}
	if u := e.ok("NOOP"); !slices.Equal(u, want) {
		t.Errorf("an examining session's NOOP:\n got %q\nwant %q", u, want)
	}
	// A FETCH before the update arrives announces first; the update that
	// follows the FETCH announces nothing again.
	want = []string{flags(" $keyword1"), perm(" $keyword1"), `* 1 FETCH (FLAGS ($keyword1))`, `* 1 FETCH (UID 1 FLAGS ($keyword1))`}
	if u := f.ok("FETCH 1 (FLAGS)"); !slices.Equal(u, want) {
		t.Errorf("FETCH FLAGS in a session not told yet:\n got %q\nwant %q", u, want)
	}

	// Known keywords, in any case, are not announced again.
	if u := a.ok("STORE 2 +FLAGS ($KEYWORD1)"); !slices.Equal(u, []string{`* 2 FETCH (FLAGS ($KEYWORD1 \Recent))`}) {
		t.Errorf("STORE of a known keyword: %q", u)
	}
	if u := b.ok("NOOP"); !slices.Equal(u, []string{`* 2 FETCH (UID 2 FLAGS ($KEYWORD1))`}) {
		t.Errorf("NOOP after a known keyword: %q", u)
	}
	// .SILENT sends no FETCH, but the keyword is in use now.
	want = []string{flags(" $keyword1 $Other"), perm(" $keyword1 $Other")}
	if u := a.ok("STORE 3 +FLAGS.SILENT ($Other)"); !slices.Equal(u, want) {
		t.Errorf("STORE .SILENT of a new keyword:\n got %q\nwant %q", u, want)
	}

	// SELECT and EXAMINE list the keywords in use, and a restart keeps them.
	ts.restart()
	c := rawLogin(t, ts.addr)
	if u := c.ok("SELECT INBOX"); !hasResp(u, flags(" $keyword1 $Other")) || !hasResp(u, perm(" $keyword1 $Other")) {
		t.Errorf("SELECT after keywords were set: %q", u)
	}
	if u := c.ok("EXAMINE INBOX"); !hasResp(u, flags(" $keyword1 $Other")) || !hasResp(u, "* OK [PERMANENTFLAGS ()] Permanent flags") {
		t.Errorf("EXAMINE after keywords were set: %q", u)
	}
}
