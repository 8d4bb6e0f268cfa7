package smtpd_test

// The dialog runner plays the SMTP transcripts in testdata/dialogs/*.txt
// against a fresh server each (testConfig: local domains localhost and
// relay.test), over a raw socket, so that byte-level attacks reach the
// server unchanged. Each transcript runs twice, with bare-newline normalize
// and reject: the two differ only for a bare LF that cannot end anything,
// which no transcript sends, so every one must pass with both.
//
// A transcript is a list of lines, each starting with a tag:
//
//	# text      a comment; the first one names the RFC clause or attack.
//	C: text     client bytes: text, unescaped, then CRLF. Consecutive C:
//	            lines are sent in one write (that is how pipelining is
//	            tested), when the next non-C: line comes.
//	S: prefix   one server reply is read (all its lines); it must have a
//	            line that starts with prefix, e.g. "S: 250 " or
//	            "S: 554 5.7.1". Only the last line of a multi-line reply
//	            has a space after the code, so "S: 250 " waits for the end
//	            of an EHLO reply.
//	E:          the server closes the connection (after any replies still
//	            to come, which are not checked).
//	Q: n        the spool holds exactly n messages.
//	B: text     expected body of the newest queued message after the
//	            relay's Received: header; consecutive B: lines are joined,
//	            each unescaped and followed by CRLF like C: lines.
//	T: d        set the server's CommandTimeout and DataIdleTimeout to the
//	            Go duration d (only before the first C: line).
//	L: n        set the server's MaxMessageBytes to n (only before the
//	            first C: line).
//	K: text     a known bug in the code under test, described by text: the
//	            rest of the dialog is skipped unless RELAY_KNOWN_BUGS=1.
//
// Escapes in C: and B: text: \r is a bare CR, \n a bare LF, \t a tab, \\ a
// backslash, \xHH the byte 0xHH, and \c at the very end means "no CRLF
// after this line" (for BDAT chunks that do not end a line).
// A line "S: " with nothing after it accepts any reply. Blank lines are
// ignored. There is no other syntax.

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/relay/smtpd"
)

const dialogDir = "../../testdata/dialogs"

func TestDialogs(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join(dialogDir, "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no dialogs in %s", dialogDir)
	}
	for _, f := range files {
		for _, mode := range bareNewlineModes {
			t.Run(strings.TrimSuffix(filepath.Base(f), ".txt")+"/"+mode.name, func(t *testing.T) {
				t.Parallel()
				runDialog(t, f, mode.v)
			})
		}
	}
}

// bareNewlineModes are the two bare-newline settings, for the tests that
// must hold with both.
var bareNewlineModes = []struct {
	name string
	v    smtpd.BareNewline
}{{"normalize", smtpd.NormalizeBareLF}, {"reject", smtpd.RejectBareLF}}

// dialogLine is one tagged line of a transcript.
type dialogLine struct {
	no   int
	tag  string
	text string
}

func readDialog(t *testing.T, path string) []dialogLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []dialogLine
	sc := bufio.NewScanner(f)
	for no := 1; sc.Scan(); no++ {
		l := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.TrimSpace(l) == "":
		case strings.HasPrefix(l, "#"):
			lines = append(lines, dialogLine{no, "#", strings.TrimSpace(l[1:])})
		case len(l) >= 2 && l[1] == ':' && strings.Contains("CSEQBTKL", l[:1]):
			text := strings.TrimPrefix(l[2:], " ")
			lines = append(lines, dialogLine{no, l[:1], text})
		default:
			t.Fatalf("%s:%d: unknown line %q", path, no, l)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// unescape turns the text of a C: or B: line into bytes, CRLF included
// unless the line ends in \c.
func unescape(text string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(text); i++ {
		c := text[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i+1 == len(text) {
			return "", fmt.Errorf("trailing backslash")
		}
		i++
		switch text[i] {
		case 'r':
			b.WriteByte('\r')
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case '\\':
			b.WriteByte('\\')
		case 'x':
			if i+3 > len(text) {
				return "", fmt.Errorf("short \\x escape")
			}
			v, err := strconv.ParseUint(text[i+1:i+3], 16, 8)
			if err != nil {
				return "", fmt.Errorf("bad \\x escape: %v", err)
			}
			b.WriteByte(byte(v))
			i += 2
		case 'c':
			if i+1 != len(text) {
				return "", fmt.Errorf("\\c not at the end of the line")
			}
			return b.String(), nil
		default:
			return "", fmt.Errorf("unknown escape \\%c", text[i])
		}
	}
	b.WriteString("\r\n")
	return b.String(), nil
}

func runDialog(t *testing.T, path string, bareNL smtpd.BareNewline) {
	lines := readDialog(t, path)
	if len(lines) == 0 || lines[0].tag != "#" {
		t.Fatalf("%s: must start with a # comment naming the RFC clause or attack", path)
	}
	cfg := testConfig()
	cfg.BareNewline = bareNL
	i := 0
	for ; i < len(lines) && lines[i].tag != "C"; i++ {
		if lines[i].tag == "T" {
			d, err := time.ParseDuration(lines[i].text)
			if err != nil {
				t.Fatalf("%s:%d: %v", path, lines[i].no, err)
			}
			cfg.CommandTimeout, cfg.DataIdleTimeout = d, d
		}
		if lines[i].tag == "L" {
			n, err := strconv.ParseInt(lines[i].text, 10, 64)
			if err != nil {
				t.Fatalf("%s:%d: %v", path, lines[i].no, err)
			}
			cfg.MaxMessageBytes = n
		}
	}
	s := startServer(t, cfg)
	rc := s.rawDial(t)
	var pending strings.Builder // C: bytes not yet sent
	var body strings.Builder    // B: lines being gathered
	flush := func() {
		if pending.Len() > 0 {
			rc.write(pending.String())
			pending.Reset()
		}
	}
	checkBody := func() {
		if body.Len() == 0 {
			return
		}
		ms := s.queued(t)
		if len(ms) == 0 {
			t.Fatalf("%s: B: lines but nothing queued", path)
		}
		newest := ms[len(ms)-1]
		s.wantBody(t, newest, body.String())
		body.Reset()
	}
	for _, l := range lines {
		at := fmt.Sprintf("%s:%d", filepath.Base(path), l.no)
		if l.tag != "C" {
			flush()
		}
		if l.tag != "B" {
			checkBody()
		}
		switch l.tag {
		case "#", "T", "L":
		case "K":
			knownBug(t, at+": "+l.text)
		case "C":
			b, err := unescape(l.text)
			if err != nil {
				t.Fatalf("%s: %v", at, err)
			}
			pending.WriteString(b)
		case "B":
			b, err := unescape(l.text)
			if err != nil {
				t.Fatalf("%s: %v", at, err)
			}
			body.WriteString(b)
		case "S":
			reply, err := rc.readReply(5 * time.Second)
			if err != nil {
				t.Fatalf("%s: waiting for %q: %v (got %q)", at, l.text, err, reply)
			}
			if !matchReply(reply, l.text) {
				t.Fatalf("%s: got reply %q, want a line starting with %q", at, reply, l.text)
			}
		case "E":
			rc.wantClosed(5 * time.Second)
		case "Q":
			n, err := strconv.Atoi(l.text)
			if err != nil {
				t.Fatalf("%s: %v", at, err)
			}
			if ms := s.queued(t); len(ms) != n {
				t.Fatalf("%s: spool holds %d messages, want %d", at, len(ms), n)
			}
		}
	}
	flush()
	checkBody()
}

func matchReply(reply []string, prefix string) bool {
	for _, line := range reply {
		if strings.HasPrefix(line, prefix) {
			return true
		}
	}
	return false
}

func TestUnescape(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"MAIL FROM:<a@b>", "MAIL FROM:<a@b>\r\n"},
		{`a\nb`, "a\nb\r\n"},
		{`a\rb\\`, "a\rb\\\r\n"},
		{`\x00\x7f\xFF`, "\x00\x7f\xff\r\n"},
		{`chunk\c`, "chunk"},
		{`\c`, ""},
		{"", "\r\n"},
	}
	for _, tt := range tests {
		if got, err := unescape(tt.in); err != nil || got != tt.want {
			t.Errorf("unescape(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{`a\`, `\q`, `\x4`, `\xzz`, `a\cb`} {
		if got, err := unescape(bad); err == nil {
			t.Errorf("unescape(%q) = %q, want an error", bad, got)
		}
	}
}
