package imapd_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/mailbox/imapd"
)

// Generators of MIME bombs, made in the test rather than stored.

func nestedMultiparts(n int) []byte {
	var b bytes.Buffer
	b.WriteString("Subject: nested\r\n")
	for i := range n {
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n", i, i)
	}
	b.WriteString("Content-Type: text/plain\r\n\r\nneedle deep inside\r\n")
	for i := n - 1; i >= 0; i-- {
		fmt.Fprintf(&b, "--b%d--\r\n", i)
	}
	return b.Bytes()
}

func manyParts(n int) []byte {
	var b bytes.Buffer
	b.WriteString("Subject: wide\r\nContent-Type: multipart/mixed; boundary=w\r\n\r\n")
	for i := range n {
		fmt.Fprintf(&b, "--w\r\n\r\n%d\r\n", i)
	}
	b.WriteString("--w\r\n\r\nneedle at the end\r\n--w--\r\n")
	return b.Bytes()
}

func hugeHeader(size int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "X-Filler-%d: some value to fill the header section\r\n", i)
	}
	b.WriteString("Subject: needle\r\n\r\nbody\r\n")
	return b.Bytes()
}

// parenDepth is the deepest nesting of parentheses in s.
func parenDepth(s string) int {
	d, most := 0, 0
	for _, c := range s {
		switch c {
		case '(':
			d++
			most = max(most, d)
		case ')':
			d--
		}
	}
	return most
}

// TestFetchAndSearchMIMEBombs guards the MIME limits end to end: FETCH
// BODYSTRUCTURE, a deep BODY[1.1.1...] and SEARCH TEXT on 5000 nested
// multiparts, 100,000 parts and a 10 MB header all answer OK with a
// BODYSTRUCTURE of at most 100 levels and 10,000 parts. Without the
// limits the nested one takes seconds per FETCH and answers 5000 levels
// deep. (The read deadline of each response is only a hang guard.)
func TestFetchAndSearchMIMEBombs(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	bombs := [][]byte{nestedMultiparts(5000), manyParts(100_000), hugeHeader(10 << 20)}
	for _, b := range bombs {
		if _, _, err := ts.boxes.Append(testUser, "INBOX", bytes.NewReader(b), time.Now(), nil); err != nil {
			t.Fatal(err)
		}
	}
	rc := rawLogin(t, ts.addr)
	rc.ok("SELECT INBOX")
	for i := range bombs {
		seq := i + 1
		u := rc.ok(fmt.Sprintf("FETCH %d (BODYSTRUCTURE)", seq))
		if len(u) != 1 {
			t.Fatalf("message %d: FETCH BODYSTRUCTURE: %d responses", seq, len(u))
		}
		if d := parenDepth(u[0]); d > 2*100+10 {
			t.Errorf("message %d: BODYSTRUCTURE nests %d parentheses deep", seq, d)
		}
		if n := strings.Count(u[0], `("text" "plain"`); n > 10000 {
			t.Errorf("message %d: BODYSTRUCTURE has %d text parts", seq, n)
		}
		deep := strings.Repeat("1.", 300) + "1"
		rc.ok(fmt.Sprintf("FETCH %d (BODY.PEEK[%s] BODY.PEEK[%s.MIME] BODY.PEEK[HEADER.FIELDS (Subject)])", seq, deep, deep))
		rc.ok(fmt.Sprintf("FETCH %d (BODY.PEEK[1.1.1.1] BINARY.PEEK[1.1] BINARY.SIZE[1])", seq))
	}
	// The text a limit cuts off is still searched as text; header fields
	// past the first 256 KiB are not parsed (the Subject of message 3).
	got := searchLine(t, rc, "SEARCH TEXT needle")
	if got != "1 2" {
		t.Errorf("SEARCH TEXT needle = %q, want 1 2", got)
	}
	if got := searchLine(t, rc, "SEARCH HEADER X-Filler-1 some"); got != "3" {
		t.Errorf("SEARCH HEADER in the huge header = %q, want 3", got)
	}
}
