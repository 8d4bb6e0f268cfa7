package imapd

import (
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// The origins go in at the right items whatever the pieces imapserver's
// output reaches the guard in, and nowhere else: not into literal data
// that looks like an item, not into a BODY item.
func TestOriginPlacer(t *testing.T) {
	t.Parallel()
	body := "x BINARY[1] ~{3}\r\nabc\r\n"
	in := "* 1 FETCH (UID 7 BODY[] {" + strconv.Itoa(len(body)) + "}\r\n" + body +
		" BINARY[1] ~{4}\r\nwxyz BINARY[1.2] ~{3}\r\nabc BINARY[1] ~{2}\r\nab)\r\n" +
		"T1 OK FETCH completed\r\n"
	want := "* 1 FETCH (UID 7 BODY[] {" + strconv.Itoa(len(body)) + "}\r\n" + body +
		" BINARY[1] ~{4}\r\nwxyz BINARY[1.2]<5> ~{3}\r\nabc BINARY[1]<0> ~{2}\r\nab)\r\n" +
		"T1 OK FETCH completed\r\n"
	secs := []*imap.FetchItemBinarySection{
		{Part: []int{1}},
		{Part: []int{1, 2}, Partial: &imap.SectionPartial{Offset: 5, Size: 3}},
		{Part: []int{1}, Partial: &imap.SectionPartial{Offset: 0, Size: 2}},
	}
	for _, size := range []int{1, 2, 3, 5, 7, 16, len(in)} {
		for first := 0; first < min(size, len(in)); first++ {
			var o originPlacer
			o.expect(binaryItems(secs))
			var out strings.Builder
			rest := in
			for n := first; rest != ""; n = size {
				n = min(max(n, 1), len(rest))
				out.Write(o.place([]byte(rest[:n])))
				rest = rest[n:]
			}
			if out.String() != want {
				t.Fatalf("in pieces of %d after %d:\n got %q\nwant %q", size, first, out.String(), want)
			}
			if o.active() {
				t.Fatalf("in pieces of %d after %d: still placing after the response", size, first)
			}
		}
	}
	if binaryItems(secs[:1]) != nil {
		t.Error("binaryItems without a partial item is not nil")
	}
}

// ID is added to imapserver's capability lists, once, and to nothing else.
func TestAdvertiseID(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"* CAPABILITY IMAP4rev1 IDLE\r\n":                                 "* CAPABILITY IMAP4rev1 IDLE ID\r\n",
		"* OK [CAPABILITY IMAP4rev2 AUTH=PLAIN] IMAP server ready\r\n":    "* OK [CAPABILITY IMAP4rev2 AUTH=PLAIN ID] IMAP server ready\r\n",
		"A1 OK [CAPABILITY IMAP4rev1 MOVE] Logged in\r\n":                 "A1 OK [CAPABILITY IMAP4rev1 MOVE ID] Logged in\r\n",
		"* CAPABILITY IMAP4rev1 ID\r\n":                                   "* CAPABILITY IMAP4rev1 ID\r\n",
		"* 1 FETCH (BODY[] {20}\r\n":                                      "* 1 FETCH (BODY[] {20}\r\n",
		"A1 NO [CAPABILITY IMAP4rev1] no\r\n":                             "A1 NO [CAPABILITY IMAP4rev1] no\r\n",
		"* OK [PERMANENTFLAGS (\\Seen)] Permanent flags\r\n":              "* OK [PERMANENTFLAGS (\\Seen)] Permanent flags\r\n",
		"* CAPABILITY IMAP4rev1":                                          "* CAPABILITY IMAP4rev1",
		"* CAPABILITY IMAP4rev1\r\nA1 OK [CAPABILITY IMAP4rev1] done\r\n": "* CAPABILITY IMAP4rev1 ID\r\nA1 OK [CAPABILITY IMAP4rev1] done\r\n",
	} {
		if got := string(advertiseID([]byte(in))); got != want {
			t.Errorf("advertiseID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIsID(t *testing.T) {
	t.Parallel()
	for line, want := range map[string]bool{
		"a1 ID NIL\r\n":   true,
		"a1 id (\r\n":     true,
		"a1 ID\r\n":       true,
		"a1 ID\n":         true,
		"a1 IDLE\r\n":     false,
		"a1 IDX NIL\r\n":  false,
		"a+ ID NIL\r\n":   false,
		"ID NIL\r\n":      false,
		"a1 UID ID\r\n":   false,
		"a1 LOGIN ID\r\n": false,
	} {
		if got := isID([]byte(line)); got != want {
			t.Errorf("isID(%q) = %v, want %v", line, got, want)
		}
	}
}

func TestQuoteText(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"v1.2.3":                `"v1.2.3"`,
		"(devel)":               `"(devel)"`,
		`a"b\c`:                 `"a\"b\\c"`,
		"v1\r\n* BYE x\x00é":    `"v1* BYE x"`,
		"v0.0.0-2026-abc+dirty": `"v0.0.0-2026-abc+dirty"`,
	} {
		if got := quoteText(in); got != want {
			t.Errorf("quoteText(%q) = %s, want %s", in, got, want)
		}
	}
}
