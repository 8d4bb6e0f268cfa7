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

// split returns a message's header (with the blank line) and text.
func split(b []byte) (header, text []byte) {
	i := bytes.Index(b, []byte("\r\n\r\n"))
	return b[:i+4], b[i+4:]
}

func fetchOne(t *testing.T, c *imapclient.Client, set imap.NumSet, o *imap.FetchOptions) *imapclient.FetchMessageBuffer {
	t.Helper()
	msgs, err := c.Fetch(set, o).Collect()
	if err != nil {
		t.Fatalf("FETCH: %v", err)
	}
	if len(msgs) != 1 {
		t.Fatalf("FETCH: %d messages, want 1", len(msgs))
	}
	return msgs[0]
}

func section(t *testing.T, c *imapclient.Client, seq uint32, sec *imap.FetchItemBodySection) []byte {
	t.Helper()
	buf := fetchOne(t, c, imap.SeqSetNum(seq), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{sec}})
	b := buf.FindBodySection(sec)
	if b == nil {
		t.Fatalf("FETCH %d: no section %+v in the answer", seq, sec)
	}
	return b
}

// RFC 3501 §6.3.11, RFC 4315 (APPENDUID), RFC 7889 (APPENDLIMIT).
func TestAppend(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{AppendLimit: 4096})
	rc := rawLogin(t, ts.addr)
	uv := respNum(rc.ok("STATUS INBOX (UIDVALIDITY)"), `UIDVALIDITY (\d+)`)
	body := sample(t, "plain.eml")

	_, st := rc.appendLit("INBOX", `(\Flagged $Label1) "05-Mar-2024 10:11:12 +0100"`, body)
	if want := fmt.Sprintf("OK [APPENDUID %d 1]", uv); !strings.HasPrefix(st, want) {
		t.Errorf("APPEND: %q, want %s", st, want)
	}
	_, st = rc.appendLit("INBOX", "", body)
	if want := fmt.Sprintf("OK [APPENDUID %d 2]", uv); !strings.HasPrefix(st, want) {
		t.Errorf("second APPEND: %q, want %s", st, want)
	}

	c := ts.login(t, nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	buf := fetchOne(t, c, imap.SeqSetNum(1), &imap.FetchOptions{Flags: true, InternalDate: true, RFC822Size: true,
		BodySection: []*imap.FetchItemBodySection{{Peek: true}}})
	if !hasFlag(buf.Flags, imap.FlagFlagged) || !hasFlag(buf.Flags, "$Label1") || hasFlag(buf.Flags, imap.FlagSeen) {
		t.Errorf("flags %v, want \\Flagged $Label1", buf.Flags)
	}
	if want := time.Date(2024, 3, 5, 9, 11, 12, 0, time.UTC); !buf.InternalDate.Equal(want) {
		t.Errorf("INTERNALDATE %v, want %v", buf.InternalDate, want)
	}
	if buf.RFC822Size != int64(len(body)) {
		t.Errorf("RFC822.SIZE %d, want %d", buf.RFC822Size, len(body))
	}
	if got := buf.FindBodySection(&imap.FetchItemBodySection{Peek: true}); !bytes.Equal(got, body) {
		t.Errorf("BODY[] differs from what was appended:\n%q\n%q", got, body)
	}
	// Without a date, the internal date is the time of the APPEND.
	buf = fetchOne(t, c, imap.SeqSetNum(2), &imap.FetchOptions{InternalDate: true})
	if d := time.Since(buf.InternalDate); d < -2*time.Second || d > time.Minute {
		t.Errorf("INTERNALDATE of an APPEND without date: %v", buf.InternalDate)
	}

	// RFC 3501 §6.3.11: TRYCREATE for a mailbox that does not exist.
	if _, st := rc.appendLit("Nope", "", body); !strings.HasPrefix(st, "NO [TRYCREATE]") {
		t.Errorf("APPEND to Nope: %q, want NO [TRYCREATE]", st)
	}

	// RFC 7889 §4: a message over the limit gets NO [TOOBIG], before the
	// literal is sent when it is synchronising.
	rc.n++
	rc.send(fmt.Sprintf("T%d APPEND INBOX {5000}", rc.n))
	if resp := rc.readResp(); !strings.HasPrefix(resp, fmt.Sprintf("T%d NO [TOOBIG]", rc.n)) {
		t.Errorf("APPEND {5000} with APPENDLIMIT 4096: %q, want NO [TOOBIG] and no continuation", resp)
	}
	big := bytes.Repeat([]byte("x"), 5000)
	cmd := c.Append("INBOX", int64(len(big)), nil)
	cmd.Write(big)
	cmd.Close()
	if _, err := cmd.Wait(); imapCode(err) != imap.ResponseCodeTooBig {
		t.Errorf("imapclient APPEND of 5000 bytes: %v, want NO [TOOBIG]", err)
	}
	if n := respNum(rc.ok("STATUS INBOX (MESSAGES)"), `MESSAGES (\d+)`); n != 2 {
		t.Errorf("MESSAGES %d after refused APPENDs, want 2", n)
	}
}

// RFC 7888 §4 and RFC 7889: the bytes of a refused non-synchronising
// literal are message data, never commands.
func TestAppendTooBigLiteralPlus(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{AppendLimit: 100})
	rc := rawLogin(t, ts.addr)
	payload := "X1 DELETE Archive\r\n" + strings.Repeat("y", 200)
	_, st := rc.appendLit("INBOX", "", []byte(payload))
	if !strings.HasPrefix(st, "NO [TOOBIG]") {
		t.Errorf("APPEND {%d+} over the limit: %q, want NO [TOOBIG]", len(payload), st)
	}
	// imapserver answers without reading the literal; the guard skips it,
	// so Archive survives and the session goes on.
	c := ts.login(t, nil)
	if _, err := c.Status("Archive", &imap.StatusOptions{NumMessages: true}).Wait(); err != nil {
		t.Errorf("the refused literal ran as commands: STATUS Archive: %v", err)
	}
	rc.ok("NOOP")
}

// RFC 3501 §6.4.5 and §7.4.2; RFC 3516 (BINARY).
func TestFetch(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	c, bodies := ts.selectSamples(t, nil)

	t.Run("attributes", func(t *testing.T) {
		msgs, err := c.Fetch(imap.SeqSetNum(1, 2, 3, 4), &imap.FetchOptions{Flags: true, InternalDate: true, RFC822Size: true, Envelope: true}).Collect()
		if err != nil || len(msgs) != 4 {
			t.Fatalf("FETCH 1:4: %d messages, %v", len(msgs), err)
		}
		for i, m := range msgs {
			if m.SeqNum != uint32(i+1) || m.RFC822Size != int64(len(bodies[i])) || !m.InternalDate.Equal(sampleDates[i]) {
				t.Errorf("message %d: seq %d size %d date %v; want %d %d %v", i+1, m.SeqNum, m.RFC822Size, m.InternalDate, i+1, len(bodies[i]), sampleDates[i])
			}
			if hasFlag(m.Flags, imap.FlagSeen) {
				t.Errorf("message %d is \\Seen before any body fetch", i+1)
			}
		}
		env := msgs[1].Envelope
		if env.Subject != "Holiday pictures" || env.MessageID != "multi-1@example.org" || len(env.To) != 2 || len(env.Cc) != 1 ||
			env.From[0].Name != "Carol" || env.From[0].Addr() != "carol@example.org" || env.To[1].Addr() != "dave@example.test" {
			t.Errorf("ENVELOPE of the multipart sample: %+v", env)
		}
		if want := time.Date(2024, 1, 2, 10, 30, 0, 0, time.UTC); !env.Date.Equal(want) {
			t.Errorf("ENVELOPE date %v, want %v", env.Date, want)
		}
		env = msgs[2].Envelope
		if env.Subject != "Grüße aus Köln" || env.From[0].Name != "Jörg Müller" {
			t.Errorf("ENVELOPE of the 8-bit sample: subject %q from %q, want the ISO-8859-1 words decoded", env.Subject, env.From[0].Name)
		}
	})

	t.Run("bodystructure", func(t *testing.T) {
		buf := fetchOne(t, c, imap.SeqSetNum(2), &imap.FetchOptions{BodyStructure: &imap.FetchItemBodyStructure{Extended: true}})
		mp, ok := buf.BodyStructure.(*imap.BodyStructureMultiPart)
		if !ok || mp.MediaType() != "multipart/mixed" || len(mp.Children) != 2 {
			t.Fatalf("BODYSTRUCTURE: %#v, want multipart/mixed with 2 parts", buf.BodyStructure)
		}
		alt, ok := mp.Children[0].(*imap.BodyStructureMultiPart)
		if !ok || alt.MediaType() != "multipart/alternative" || len(alt.Children) != 2 ||
			alt.Children[0].MediaType() != "text/plain" || alt.Children[1].MediaType() != "text/html" {
			t.Errorf("part 1: %#v, want multipart/alternative (text/plain, text/html)", mp.Children[0])
		}
		att, ok := mp.Children[1].(*imap.BodyStructureSinglePart)
		if !ok || att.MediaType() != "application/octet-stream" || !strings.EqualFold(att.Encoding, "base64") || att.Params["name"] != "data.bin" {
			t.Fatalf("part 2: %#v, want application/octet-stream base64 name=data.bin", mp.Children[1])
		}
		if att.Size != 130 { // two 64-character lines with CRLF, the last CRLF belongs to the boundary
			t.Errorf("part 2 size %d, want 130", att.Size)
		}
		if d := att.Disposition(); d == nil || !strings.EqualFold(d.Value, "attachment") || d.Params["filename"] != "data.bin" {
			t.Errorf("part 2 disposition %+v, want attachment filename=data.bin", d)
		}

		buf = fetchOne(t, c, imap.SeqSetNum(4), &imap.FetchOptions{BodyStructure: &imap.FetchItemBodyStructure{Extended: true}})
		mp, ok = buf.BodyStructure.(*imap.BodyStructureMultiPart)
		if !ok || len(mp.Children) != 2 {
			t.Fatalf("BODYSTRUCTURE of the nested sample: %#v", buf.BodyStructure)
		}
		inner, ok := mp.Children[1].(*imap.BodyStructureSinglePart)
		if !ok || inner.MediaType() != "message/rfc822" || inner.MessageRFC822 == nil || inner.MessageRFC822.Envelope.Subject != "Meeting notes" {
			t.Errorf("part 2 of the nested sample: %#v, want message/rfc822 with its envelope", mp.Children[1])
		}
	})

	t.Run("sections", func(t *testing.T) {
		for i, b := range bodies {
			if got := section(t, c, uint32(i+1), &imap.FetchItemBodySection{Peek: true}); !bytes.Equal(got, b) {
				t.Errorf("BODY.PEEK[] of %s differs from the stored message", sampleNames[i])
			}
		}
		hdr, text := split(bodies[0])
		if got := section(t, c, 1, &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, Peek: true}); !bytes.Equal(got, hdr) {
			t.Errorf("BODY[HEADER] = %q, want %q", got, hdr)
		}
		if got := section(t, c, 1, &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"SUBJECT"}, Peek: true}); string(got) != "Subject: Plain hello\r\n\r\n" {
			t.Errorf("BODY[HEADER.FIELDS (SUBJECT)] = %q", got)
		}
		if got := section(t, c, 1, &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFieldsNot: []string{"Subject", "Date", "Message-ID", "To"}, Peek: true}); string(got) != "From: Bob Sender <bob@example.net>\r\n\r\n" {
			t.Errorf("BODY[HEADER.FIELDS.NOT (...)] = %q", got)
		}
		if got := section(t, c, 1, &imap.FetchItemBodySection{Specifier: imap.PartSpecifierText, Peek: true}); !bytes.Equal(got, text) {
			t.Errorf("BODY[TEXT] = %q, want %q", got, text)
		}
		// RFC 3501 §6.4.5: a non-multipart message has only part 1, its text.
		if got := section(t, c, 1, &imap.FetchItemBodySection{Part: []int{1}, Peek: true}); !bytes.Equal(got, text) {
			t.Errorf("BODY[1] of a plain message = %q, want the text", got)
		}

		if got := section(t, c, 2, &imap.FetchItemBodySection{Part: []int{1, 1}, Peek: true}); string(got) != "See the attached pineapple picture." {
			t.Errorf("BODY[1.1] = %q", got)
		}
		if got := section(t, c, 2, &imap.FetchItemBodySection{Part: []int{1}, Peek: true}); !bytes.HasPrefix(got, []byte("--alt-boundary\r\nContent-Type: text/plain")) ||
			!bytes.Contains(got, []byte("<b>pineapple</b>")) || !bytes.HasSuffix(bytes.TrimRight(got, "\r\n"), []byte("--alt-boundary--")) {
			t.Errorf("BODY[1] of the multipart sample = %q, want the multipart/alternative body", got)
		}
		wantMIME := "Content-Type: application/octet-stream; name=\"data.bin\"\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
		if got := section(t, c, 2, &imap.FetchItemBodySection{Part: []int{2}, Specifier: imap.PartSpecifierMIME, Peek: true}); string(got) != wantMIME {
			t.Errorf("BODY[2.MIME] = %q, want %q", got, wantMIME)
		}
		b64 := "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v\r\nMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5f"
		if got := section(t, c, 2, &imap.FetchItemBodySection{Part: []int{2}, Peek: true}); string(got) != b64 {
			t.Errorf("BODY[2] = %q, want the base64 text", got)
		}

		// message/rfc822 parts: HEADER and TEXT of the inner message.
		if got := section(t, c, 4, &imap.FetchItemBodySection{Part: []int{2}, Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"Subject"}, Peek: true}); string(got) != "Subject: Meeting notes\r\n\r\n" {
			t.Errorf("BODY[2.HEADER.FIELDS (Subject)] of the nested sample = %q", got)
		}
		if got := section(t, c, 4, &imap.FetchItemBodySection{Part: []int{2}, Specifier: imap.PartSpecifierText, Peek: true}); string(got) != "The inner message mentions the word zanzibar." {
			t.Errorf("BODY[2.TEXT] of the nested sample = %q", got)
		}
	})

	t.Run("binary", func(t *testing.T) {
		sec := &imap.FetchItemBinarySection{Part: []int{2}, Peek: true}
		buf := fetchOne(t, c, imap.SeqSetNum(2), &imap.FetchOptions{BinarySection: []*imap.FetchItemBinarySection{sec},
			BinarySectionSize: []*imap.FetchItemBinarySectionSize{{Part: []int{2}}}})
		want := make([]byte, 0x60)
		for i := range want {
			want[i] = byte(i)
		}
		if got := buf.FindBinarySection(sec); !bytes.Equal(got, want) {
			t.Errorf("BINARY.PEEK[2] = %x, want bytes 00..5f", got)
		}
		if n, ok := buf.FindBinarySectionSize([]int{2}); !ok || n != 0x60 {
			t.Errorf("BINARY.SIZE[2] = %d (%v), want 96", n, ok)
		}
	})

	t.Run("partial", func(t *testing.T) {
		rc := rawLogin(t, ts.addr)
		rc.ok("EXAMINE INBOX")
		u := rc.ok("FETCH 1 (BODY.PEEK[]<10.20>)")
		want := fmt.Sprintf("* 1 FETCH (BODY[]<10> {20}\r\n%s)", bodies[0][10:30])
		if !slices.Contains(u, want) {
			t.Errorf("FETCH 1 BODY.PEEK[]<10.20>: %q, want %q", u, want)
		}
		// A partial past the end is empty (RFC 3501 §6.4.5).
		u = rc.ok(fmt.Sprintf("FETCH 1 (BODY.PEEK[]<%d.10>)", len(bodies[0])+5))
		if len(find(u, fmt.Sprintf("BODY[]<%d> ", len(bodies[0])+5))) != 1 || len(find(u, `""`))+len(find(u, "{0}")) != 1 {
			t.Errorf("partial past the end: %q, want an empty string", u)
		}
		hdr, _ := split(bodies[0])
		u = rc.ok("FETCH 1 (BODY.PEEK[HEADER]<0.4>)")
		if want := fmt.Sprintf("* 1 FETCH (BODY[HEADER]<0> {4}\r\n%s)", hdr[:4]); !slices.Contains(u, want) {
			t.Errorf("BODY.PEEK[HEADER]<0.4>: %q, want %q", u, want)
		}
	})

	// RFC 3501 §6.4.5: BODY[] sets \Seen, BODY.PEEK[] and RFC822.HEADER do
	// not; under EXAMINE nothing changes.
	t.Run("seen", func(t *testing.T) {
		flags := func(seq uint32) []imap.Flag {
			return fetchOne(t, c, imap.SeqSetNum(seq), &imap.FetchOptions{Flags: true}).Flags
		}
		if hasFlag(flags(1), imap.FlagSeen) || hasFlag(flags(3), imap.FlagSeen) {
			t.Fatalf("\\Seen set by the PEEK fetches above")
		}
		buf := fetchOne(t, c, imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}})
		if !hasFlag(buf.Flags, imap.FlagSeen) {
			t.Errorf("FETCH BODY[] response flags %v, want \\Seen reported with it", buf.Flags)
		}
		if !hasFlag(flags(1), imap.FlagSeen) {
			t.Errorf("BODY[] did not set \\Seen")
		}
		fetchOne(t, c, imap.SeqSetNum(2), &imap.FetchOptions{BinarySection: []*imap.FetchItemBinarySection{{Part: []int{2}}}})
		if !hasFlag(flags(2), imap.FlagSeen) {
			t.Errorf("BINARY[2] did not set \\Seen")
		}

		rc := rawLogin(t, ts.addr)
		rc.ok("SELECT INBOX")
		rc.ok("FETCH 3 (RFC822.HEADER)")
		if hasFlag(flags(3), imap.FlagSeen) {
			t.Errorf("RFC822.HEADER set \\Seen")
		}
		rc.ok("EXAMINE INBOX")
		rc.ok("FETCH 3 (BODY[])")
		if hasFlag(flags(3), imap.FlagSeen) {
			t.Errorf("BODY[] under EXAMINE set \\Seen")
		}
		rc.ok("SELECT INBOX")
		rc.ok("FETCH 3 (RFC822)")
		if !hasFlag(flags(3), imap.FlagSeen) {
			t.Errorf("RFC822 did not set \\Seen")
		}
	})

	// RFC 3501 §6.4.8: UID FETCH always reports the UID.
	t.Run("uid", func(t *testing.T) {
		rc := rawLogin(t, ts.addr)
		rc.ok("EXAMINE INBOX")
		u := rc.ok("UID FETCH 2:3 (FLAGS)")
		if len(find(u, "* 2 FETCH (", "UID 2")) != 1 || len(find(u, "* 3 FETCH (", "UID 3")) != 1 || len(u) != 2 {
			t.Errorf("UID FETCH 2:3 (FLAGS): %q, want messages 2 and 3 with their UIDs", u)
		}
		if u := rc.ok("UID FETCH 4:* (FLAGS)"); len(find(u, "UID 4")) != 1 || len(u) != 1 {
			t.Errorf("UID FETCH 4:*: %q", u)
		}
		// RFC 3501 §6.4.8: n:* includes the highest UID even when n is above it.
		if u := rc.ok("UID FETCH 99:* (FLAGS)"); len(find(u, "UID 4")) != 1 || len(u) != 1 {
			t.Errorf("UID FETCH 99:*: %q, want the last message", u)
		}
		if u := rc.ok("UID FETCH 50:60 (FLAGS)"); len(u) != 0 {
			t.Errorf("UID FETCH 50:60: %q, want nothing", u)
		}
		if u := rc.ok("FETCH 4 (UID)"); !slices.Contains(u, "* 4 FETCH (UID 4)") {
			t.Errorf("FETCH 4 (UID): %q", u)
		}
	})
}

// RFC 3501 §6.4.6: STORE, .SILENT, keywords; read-only under EXAMINE.
func TestStore(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	rc := rawLogin(t, ts.addr)
	rc.ok("SELECT INBOX")
	// This session holds the messages as \Recent; that flag comes along in
	// every FLAGS it sees. A new keyword is announced in FLAGS first.
	const sys = `\Seen \Answered \Flagged \Deleted \Draft`
	for _, tc := range []struct {
		cmd  string
		want []string
	}{
		{`STORE 1 +FLAGS (\Flagged)`, []string{`* 1 FETCH (FLAGS (\Flagged \Recent))`}},
		{`STORE 1 +FLAGS (\Seen $Label1)`, []string{
			`* FLAGS (` + sys + ` $Label1)`,
			`* OK [PERMANENTFLAGS (` + sys + ` $Label1 \*)] Permanent flags`,
			`* 1 FETCH (FLAGS (\Flagged \Seen $Label1 \Recent))`}},
		{`STORE 1 -FLAGS (\Flagged)`, []string{`* 1 FETCH (FLAGS (\Seen $Label1 \Recent))`}},
		{`STORE 1 FLAGS (\Answered $Work)`, []string{
			`* FLAGS (` + sys + ` $Label1 $Work)`,
			`* OK [PERMANENTFLAGS (` + sys + ` $Label1 $Work \*)] Permanent flags`,
			`* 1 FETCH (FLAGS (\Answered $Work \Recent))`}},
		{`STORE 1 FLAGS ()`, []string{`* 1 FETCH (FLAGS (\Recent))`}},
		{`UID STORE 2 +FLAGS (\Draft)`, []string{`* 2 FETCH (UID 2 FLAGS (\Draft \Recent))`}},
		{`STORE 3 +FLAGS ($label1 $LABEL1)`, []string{`* 3 FETCH (FLAGS ($label1 \Recent))`}},
	} {
		if u := rc.ok(tc.cmd); !slices.Equal(u, tc.want) {
			t.Errorf("%s: %q, want %q", tc.cmd, u, tc.want)
		}
	}
	if u := rc.ok(`STORE 1:4 +FLAGS.SILENT (\Deleted)`); len(u) != 0 {
		t.Errorf("STORE .SILENT answered %q, want no FETCH", u)
	}
	if u := rc.ok(`FETCH 4 (FLAGS)`); !slices.Equal(u, []string{`* 4 FETCH (FLAGS (\Deleted \Recent))`}) {
		t.Errorf("FETCH after .SILENT store: %q", u)
	}
	if u := rc.ok(`STORE 1:* -FLAGS.SILENT (\Deleted)`); len(u) != 0 {
		t.Errorf("STORE -FLAGS.SILENT answered %q", u)
	}
	// \Recent is the server's; a client cannot store it (RFC 3501 §2.3.2).
	rc2 := rawLogin(t, ts.addr)
	rc2.ok("SELECT INBOX")
	rc2.ok(`STORE 4 +FLAGS (\Recent)`)
	if u := rc2.ok(`FETCH 4 (FLAGS)`); !slices.Equal(u, []string{`* 4 FETCH (FLAGS ())`}) {
		t.Errorf("after STORE +FLAGS (\\Recent) in a session without it: %q", u)
	}

	rc2.ok("EXAMINE INBOX")
	if _, st := rc2.run(`STORE 1 +FLAGS (\Seen)`); !strings.HasPrefix(st, "NO") {
		t.Errorf("STORE under EXAMINE: %q, want NO", st)
	}
	if _, st := rc2.run(`MOVE 1 Trash`); !strings.HasPrefix(st, "NO") {
		t.Errorf("MOVE under EXAMINE: %q, want NO", st)
	}
	rc2.ok(`EXPUNGE`) // nothing is marked \Deleted; must not fail or change anything
	if u := rc2.ok(`FETCH 1 (FLAGS)`); len(find(u, `\Seen`)) != 0 {
		t.Errorf("STORE under EXAMINE changed flags: %q", u)
	}
}

// searchLine runs SEARCH (or UID SEARCH) and returns the numbers it found.
func searchLine(t *testing.T, rc *rawConn, cmd string) string {
	t.Helper()
	u, st := rc.run(cmd)
	if !strings.HasPrefix(st, "OK") {
		t.Errorf("%s: %q", cmd, st)
		return st
	}
	for _, r := range u {
		if rest, ok := strings.CutPrefix(r, "* SEARCH"); ok {
			return strings.TrimSpace(rest)
		}
		if strings.HasPrefix(r, "* ESEARCH") {
			return r
		}
	}
	t.Errorf("%s: no SEARCH response in %q", cmd, u)
	return ""
}

// RFC 3501 §6.4.4, RFC 4731 (ESEARCH), RFC 5182 (SEARCHRES).
func TestSearch(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	bodies := ts.appendSamples(t)
	rc := rawLogin(t, ts.addr)
	rc.ok("SELECT INBOX")
	rc.ok(`STORE 1 +FLAGS.SILENT (\Seen)`)
	rc.ok(`STORE 2 +FLAGS.SILENT (\Seen \Flagged)`)
	rc.ok(`STORE 3 +FLAGS.SILENT (\Deleted)`)
	rc.ok(`STORE 4 +FLAGS.SILENT ($Label1)`)

	sizes := make([]int, len(bodies))
	for i, b := range bodies {
		sizes[i] = len(b)
	}
	larger := func(n int) string {
		var out []string
		for i, s := range sizes {
			if s > n {
				out = append(out, fmt.Sprint(i+1))
			}
		}
		return strings.Join(out, " ")
	}
	smaller := func(n int) string {
		var out []string
		for i, s := range sizes {
			if s < n {
				out = append(out, fmt.Sprint(i+1))
			}
		}
		return strings.Join(out, " ")
	}

	for _, tc := range []struct{ cmd, want string }{
		{"SEARCH ALL", "1 2 3 4"},
		{"SEARCH SEEN", "1 2"},
		{"SEARCH UNSEEN", "3 4"},
		{"SEARCH DELETED", "3"},
		{"SEARCH UNDELETED", "1 2 4"},
		{"SEARCH FLAGGED", "2"},
		{"SEARCH UNFLAGGED", "1 3 4"},
		{"SEARCH KEYWORD $Label1", "4"},
		{"SEARCH KEYWORD $label1", "4"},
		{"SEARCH UNKEYWORD $Label1", "1 2 3"},
		{"SEARCH RECENT", "1 2 3 4"},
		{"SEARCH NEW", "3 4"},
		{"SEARCH OLD", ""},
		{"SEARCH ANSWERED", ""},
		{"SEARCH SINCE 3-Jan-2024", "3 4"},
		{"SEARCH BEFORE 2-Jan-2024", "1"},
		{"SEARCH ON 2-Jan-2024", "2"},
		{"SEARCH SINCE 2-Jan-2024 BEFORE 4-Jan-2024", "2 3"},
		{"SEARCH SENTSINCE 3-Jan-2024", "3 4"},
		{"SEARCH SENTBEFORE 2-Jan-2024", "1"},
		{"SEARCH SENTON 3-Jan-2024", "3"},
		{fmt.Sprintf("SEARCH LARGER %d", sizes[0]), larger(sizes[0])},
		{fmt.Sprintf("SEARCH SMALLER %d", sizes[1]), smaller(sizes[1])},
		{fmt.Sprintf("SEARCH LARGER %d SMALLER %d", sizes[0]-1, sizes[0]+1), "1"},
		{`SEARCH HEADER Message-ID "multi-1"`, "2"},
		{`SEARCH HEADER Cc ""`, "2"},
		{`SEARCH HEADER X-Nope ""`, ""},
		{`SEARCH SUBJECT "plain HELLO"`, "1"},
		{`SEARCH SUBJECT meeting`, "4"},
		{`SEARCH FROM carol`, "2"},
		{`SEARCH FROM "example.com"`, "4"},
		{`SEARCH TO dave`, "2"},
		{`SEARCH CC erin`, "2"},
		{`SEARCH BODY pineapple`, "2"},
		{`SEARCH BODY "quarterly report"`, "1"},
		{`SEARCH BODY carol`, ""}, // header only
		{`SEARCH TEXT carol`, "2"},
		{`SEARCH TEXT quarterly`, "1"},
		{`SEARCH TEXT nowhere-to-be-found`, ""},
		{"SEARCH 2:3", "2 3"},
		{"SEARCH 2:*", "2 3 4"},
		{"SEARCH *", "4"},
		{"SEARCH 1,3", "1 3"},
		{"SEARCH UID 2:3", "2 3"},
		{"SEARCH UID 3:*", "3 4"},
		{"UID SEARCH UID 1,4", "1 4"},
		{"UID SEARCH FLAGGED", "2"},
		{"SEARCH OR FLAGGED DELETED", "2 3"},
		{"SEARCH NOT SEEN", "3 4"},
		{"SEARCH NOT OR SEEN DELETED", "4"},
		{"SEARCH OR SUBJECT plain BODY zanzibar-not", "1"},
		{"SEARCH SEEN NOT FLAGGED", "1"},
		{"SEARCH (OR 1 2) (OR 2 3)", "2"},
	} {
		if got := searchLine(t, rc, tc.cmd); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.cmd, got, tc.want)
		}
	}

	// Non-ASCII keys with CHARSET UTF-8: decoded encoded words and an
	// 8-bit body.
	for _, tc := range []struct{ key, arg, want string }{
		{"SUBJECT", "grüße", "3"},
		{"FROM", "Müller", "3"},
		{"BODY", "straßenbahn", "3"},
		{"BODY", "KÖLN", "3"},
		{"TEXT", "Jörg", "3"},
	} {
		cmd := fmt.Sprintf("SEARCH CHARSET UTF-8 %s {%d+}\r\n%s", tc.key, len(tc.arg), tc.arg)
		if got := searchLine(t, rc, cmd); got != tc.want {
			t.Errorf("SEARCH CHARSET UTF-8 %s %s: %q, want %q", tc.key, tc.arg, got, tc.want)
		}
	}
	if _, st := rc.run("SEARCH CHARSET KOI8-R BODY x"); !strings.HasPrefix(st, "NO [BADCHARSET") {
		t.Errorf("SEARCH CHARSET KOI8-R: %q, want NO [BADCHARSET]", st)
	}

	// RFC 4731: ESEARCH with MIN MAX COUNT ALL, by sequence number and UID.
	u := rc.ok("SEARCH RETURN (MIN MAX COUNT ALL) UNDELETED")
	if got := find(u, "* ESEARCH"); len(got) != 1 || !strings.HasSuffix(got[0], "MIN 1 MAX 4 COUNT 3") && !strings.Contains(got[0], "ALL 1:2,4") {
		t.Errorf("ESEARCH (MIN MAX COUNT ALL) UNDELETED: %q", u)
	}
	for _, want := range []string{"ALL 1:2,4", "MIN 1", "MAX 4", "COUNT 3"} {
		if got := find(u, "* ESEARCH", want); len(got) != 1 {
			t.Errorf("ESEARCH (MIN MAX COUNT ALL) UNDELETED: %q lacks %s", u, want)
		}
	}
	u = rc.ok("UID SEARCH RETURN (COUNT) DELETED")
	if got := find(u, "* ESEARCH", " UID ", "COUNT 1"); len(got) != 1 {
		t.Errorf("UID SEARCH RETURN (COUNT) DELETED: %q", u)
	}
	u = rc.ok("SEARCH RETURN (MIN MAX COUNT) KEYWORD $Nope")
	if got := find(u, "* ESEARCH", "COUNT 0"); len(got) != 1 || strings.Contains(got[0], "MIN") {
		t.Errorf("ESEARCH with no match: %q, want COUNT 0 and no MIN/MAX", u)
	}

	// RFC 5182: SAVE, then "$" in FETCH, UID FETCH, STORE and SEARCH.
	u = rc.ok("SEARCH RETURN (SAVE) UNSEEN")
	if got := find(u, "* 3 FETCH", "UID 3"); len(got) != 0 {
		t.Fatalf("unexpected %q", got)
	}
	if got := rc.ok("FETCH $ (UID)"); !slices.Equal(got, []string{"* 3 FETCH (UID 3)", "* 4 FETCH (UID 4)"}) {
		t.Errorf("FETCH $ after SAVE UNSEEN: %q", got)
	}
	if got := rc.ok("UID FETCH $ (FLAGS)"); len(got) != 2 {
		t.Errorf("UID FETCH $: %q", got)
	}
	if got := searchLine(t, rc, "SEARCH $ KEYWORD $Label1"); got != "4" {
		t.Errorf(`after SEARCH RETURN (SAVE) UNSEEN, "SEARCH $ KEYWORD $Label1" answers %q, want 4`, got)
	}
	if len(find(u, "* ESEARCH")) != 0 {
		t.Logf("note: SEARCH RETURN (SAVE) alone answered %q; RFC 5182 §2.1's example has no ESEARCH (library behaviour)", u)
	}
	// RFC 5182 §2.1 (and RFC 9051 §6.4.4.1): SAVE with MIN alone saves only
	// the MIN message.
	rc.ok("SEARCH RETURN (MIN SAVE) ALL")
	if got := rc.ok("FETCH $ (UID)"); !slices.Equal(got, []string{"* 1 FETCH (UID 1)"}) {
		t.Errorf(`SEARCH RETURN (MIN SAVE) ALL then FETCH $ returns %q, want only the MIN message`, got)
	}
}

// RFC 3501 §6.4.4: BODY and TEXT look into the whole body, including an
// attached message/rfc822.
func TestSearchNestedMessage(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	rc := rawLogin(t, ts.addr)
	rc.ok("EXAMINE INBOX")
	if got := searchLine(t, rc, "SEARCH TEXT zanzibar"); got != "4" {
		t.Errorf("SEARCH TEXT zanzibar: %q, want 4 (the word is in the attached message only)", got)
	}
	if got := searchLine(t, rc, "SEARCH BODY zanzibar"); got != "4" {
		t.Errorf("SEARCH BODY zanzibar: %q, want 4", got)
	}
}

// RFC 4315 (COPYUID), RFC 6851 (MOVE).
func TestCopyMove(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	bodies := ts.appendSamples(t)
	rc := rawLogin(t, ts.addr)
	archiveUV := respNum(rc.ok("STATUS Archive (UIDVALIDITY)"), `UIDVALIDITY (\d+)`)
	trashUV := respNum(rc.ok("STATUS Trash (UIDVALIDITY)"), `UIDVALIDITY (\d+)`)
	rc.ok("SELECT INBOX")
	rc.ok(`STORE 2 +FLAGS.SILENT (\Flagged $Label1)`)

	u, st := rc.run("COPY 1:2 Archive")
	if want := fmt.Sprintf("OK [COPYUID %d 1:2 1:2]", archiveUV); !strings.HasPrefix(st, want) {
		t.Errorf("COPY 1:2 Archive: %q, want %s", st, want)
	}
	if len(find(u, "EXPUNGE")) != 0 {
		t.Errorf("COPY expunged: %q", u)
	}
	_, st = rc.run("UID COPY 4 Archive")
	if want := fmt.Sprintf("OK [COPYUID %d 4 3]", archiveUV); !strings.HasPrefix(st, want) {
		t.Errorf("UID COPY 4 Archive: %q, want %s", st, want)
	}
	if _, st := rc.run("COPY 1 Nope"); !strings.HasPrefix(st, "NO [TRYCREATE]") {
		t.Errorf("COPY to Nope: %q, want NO [TRYCREATE]", st)
	}

	// The copies keep flags, internal date and bytes.
	c := ts.login(t, nil)
	if _, err := c.Select("Archive", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1, 2, 3), &imap.FetchOptions{UID: true, Flags: true, InternalDate: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil || len(msgs) != 3 {
		t.Fatalf("FETCH in Archive: %d, %v", len(msgs), err)
	}
	for i, src := range []int{0, 1, 3} {
		m := msgs[i]
		if !bytes.Equal(m.FindBodySection(&imap.FetchItemBodySection{Peek: true}), bodies[src]) || !m.InternalDate.Equal(sampleDates[src]) {
			t.Errorf("Archive message %d differs from INBOX message %d", i+1, src+1)
		}
	}
	if !hasFlag(msgs[1].Flags, imap.FlagFlagged) || !hasFlag(msgs[1].Flags, "$Label1") {
		t.Errorf("copied flags %v, want \\Flagged $Label1", msgs[1].Flags)
	}

	// MOVE: COPYUID in an untagged OK, then EXPUNGE (RFC 6851 §4.3).
	u, st = rc.run("MOVE 3 Trash")
	if !strings.HasPrefix(st, "OK") {
		t.Fatalf("MOVE 3 Trash: %q", st)
	}
	if want := fmt.Sprintf("* OK [COPYUID %d 3 1]", trashUV); len(find(u, want)) != 1 {
		t.Errorf("MOVE 3 Trash: %q, want %s", u, want)
	}
	if !hasResp(u, "* 3 EXPUNGE") {
		t.Errorf("MOVE 3 Trash: %q, want * 3 EXPUNGE", u)
	}
	u, _ = rc.run("UID MOVE 2,4 Trash")
	if want := fmt.Sprintf("* OK [COPYUID %d 2,4 2:3]", trashUV); len(find(u, want)) != 1 {
		t.Errorf("UID MOVE 2,4 Trash: %q, want %s", u, want)
	}
	if !slices.Equal(find(u, "EXPUNGE"), []string{"* 2 EXPUNGE", "* 2 EXPUNGE"}) {
		t.Errorf("UID MOVE 2,4: expunges %q, want 2 then 2", find(u, "EXPUNGE"))
	}
	if got := searchLine(t, rc, "UID SEARCH ALL"); got != "1" {
		t.Errorf("INBOX after the moves: UIDs %q, want 1", got)
	}
	st2 := rc.ok("STATUS Trash (MESSAGES)")
	if n := respNum(st2, `MESSAGES (\d+)`); n != 3 {
		t.Errorf("Trash holds %d, want 3", n)
	}
}

// RFC 3501 §6.4.3, RFC 4315 §2.1 (UID EXPUNGE), §6.4.2 (CLOSE) and
// RFC 3691 (UNSELECT).
func TestExpungeCloseUnselect(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	ts.appendSamples(t) // UIDs 1..8
	rc := rawLogin(t, ts.addr)
	rc.ok("SELECT INBOX")

	rc.ok(`STORE 1,3 +FLAGS.SILENT (\Deleted)`)
	if u := rc.ok("EXPUNGE"); !slices.Equal(u, []string{"* 1 EXPUNGE", "* 2 EXPUNGE"}) {
		t.Errorf("EXPUNGE of 1 and 3: %q, want * 1 EXPUNGE, * 2 EXPUNGE", u)
	}
	if got := searchLine(t, rc, "UID SEARCH ALL"); got != "2 4 5 6 7 8" {
		t.Errorf("UIDs after EXPUNGE: %q", got)
	}

	// UID EXPUNGE removes only the named UIDs among the \Deleted.
	rc.ok(`UID STORE 2,4,5 +FLAGS.SILENT (\Deleted)`)
	if u := rc.ok("UID EXPUNGE 4:5"); !slices.Equal(u, []string{"* 2 EXPUNGE", "* 2 EXPUNGE"}) {
		t.Errorf("UID EXPUNGE 4:5: %q", u)
	}
	if u := rc.ok("UID EXPUNGE 6"); len(u) != 0 {
		t.Errorf("UID EXPUNGE of a message without \\Deleted: %q", u)
	}
	if got := searchLine(t, rc, "UID SEARCH ALL"); got != "2 6 7 8" {
		t.Errorf("UIDs after UID EXPUNGE 4:5: %q, want 2 6 7 8 (2 still \\Deleted)", got)
	}
	if got := searchLine(t, rc, "UID SEARCH DELETED"); got != "2" {
		t.Errorf("\\Deleted after UID EXPUNGE: %q, want 2", got)
	}

	// UNSELECT leaves \Deleted messages; CLOSE expunges them silently.
	u := rc.ok("UNSELECT")
	if len(find(u, "EXPUNGE")) != 0 {
		t.Errorf("UNSELECT: %q", u)
	}
	if n := respNum(rc.ok("STATUS INBOX (MESSAGES)"), `MESSAGES (\d+)`); n != 4 {
		t.Errorf("after UNSELECT: %d messages, want 4", n)
	}
	// CLOSE after EXAMINE does not expunge (RFC 3501 §6.4.2).
	rc.ok("EXAMINE INBOX")
	rc.ok("CLOSE")
	if n := respNum(rc.ok("STATUS INBOX (MESSAGES)"), `MESSAGES (\d+)`); n != 4 {
		t.Errorf("after EXAMINE + CLOSE: %d messages, want 4", n)
	}
	rc.ok("SELECT INBOX")
	if u := rc.ok("CLOSE"); len(find(u, "EXPUNGE")) != 0 {
		t.Errorf("CLOSE sent %q; RFC 3501 §6.4.2: no untagged EXPUNGE", u)
	}
	if n := respNum(rc.ok("STATUS INBOX (MESSAGES)"), `MESSAGES (\d+)`); n != 3 {
		t.Errorf("after CLOSE: %d messages, want 3", n)
	}
	if _, st := rc.run("FETCH 1 (FLAGS)"); strings.HasPrefix(st, "OK") {
		t.Errorf("FETCH after CLOSE: %q, want BAD (nothing selected)", st)
	}
}

// In a multipart/digest, a part that is an empty message ends where the
// line ending before the next delimiter begins, which belongs to the
// delimiter (RFC 2046 §5.1.1): the message in it is empty, and no
// section of part 1 returns that line ending or anything else outside it.
// Part 2, whose blank line is that line ending, has a cut header and no
// body.
func TestDigestEmptyParts(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	msg := "Content-Type: multipart/digest; boundary=d\n\n--d\n\n\n--d\nX-Part: two\n\n--d--\n"
	ts.deliver(t, []byte(msg))
	c := ts.login(t, nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		part []int
		spec imap.PartSpecifier
		want string
	}{
		{[]int{1}, imap.PartSpecifierNone, ""},
		{[]int{1}, imap.PartSpecifierMIME, "\n"},
		{[]int{1}, imap.PartSpecifierHeader, "\r\n"},
		{[]int{1}, imap.PartSpecifierText, ""},
		{[]int{2}, imap.PartSpecifierNone, ""},
		{[]int{2}, imap.PartSpecifierMIME, "X-Part: two\n\r\n"},
	} {
		sec := &imap.FetchItemBodySection{Part: tc.part, Specifier: tc.spec, Peek: true}
		if got := string(section(t, c, 1, sec)); got != tc.want {
			t.Errorf("BODY[%v.%s] = %q, want %q", tc.part, tc.spec, got, tc.want)
		}
	}
	bs := fetchOne(t, c, imap.SeqSetNum(1), &imap.FetchOptions{BodyStructure: &imap.FetchItemBodyStructure{Extended: true}}).BodyStructure
	mp, ok := bs.(*imap.BodyStructureMultiPart)
	if !ok || len(mp.Children) != 2 {
		t.Fatalf("BODYSTRUCTURE %#v, want a multipart of two", bs)
	}
	if p, ok := mp.Children[0].(*imap.BodyStructureSinglePart); !ok || p.MediaType() != "message/rfc822" || p.Size != 0 {
		t.Errorf("part 1: %#v, want an empty message/rfc822", mp.Children[0])
	}
}
