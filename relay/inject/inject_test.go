package inject

import (
	"bufio"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestCRLF(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"LF", "a\nb\n", "a\r\nb\r\n"},
		{"CRLF kept", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"mixed", "a\r\nb\nc\r\n", "a\r\nb\r\nc\r\n"},
		{"no final newline", "a\nb", "a\r\nb\r\n"},
		{"lone CR dropped", "a\rb\n\r\n", "ab\r\n\r\n"},
		{"empty", "", ""},
		{"long line", strings.Repeat("x", 10000) + "\n", strings.Repeat("x", 10000) + "\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// One byte at a time, so that line ends split across reads.
			got, err := io.ReadAll(CRLF(iotest.OneByteReader(strings.NewReader(tc.in))))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("CRLF(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestCRLFPassesErrors(t *testing.T) {
	boom := errors.New("boom")
	_, err := io.ReadAll(CRLF(io.MultiReader(strings.NewReader("a\n"), iotest.ErrReader(boom))))
	if !errors.Is(err, boom) {
		t.Errorf("err = %v, want %v", err, boom)
	}
}

func TestUntilDot(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"dot ends", "a\n.\nb\n", "a\n"},
		{"dot CRLF ends", "a\r\n.\r\nb\r\n", "a\r\n"},
		{"leading dot is text", "a\n.b\n", "a\n.b\n"},
		{"two dots is text", "..\n", "..\n"},
		{"dot without newline at EOF is text", "a\n.", "a\n."},
		{"no dot", "a\nb", "a\nb"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := io.ReadAll(UntilDot(strings.NewReader(tc.in)))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("UntilDot(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

var now = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func prepare(t *testing.T, msg string, o Options) (string, []string, string) {
	t.Helper()
	if o.Now.IsZero() {
		o.Now = now
	}
	o.Hostname, o.MessageID = "mx.example.org", "QID"
	br := bufio.NewReader(CRLF(strings.NewReader(msg)))
	h, rcpts, err := Prepare(br, o)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	rest, _ := io.ReadAll(br)
	return string(h), rcpts, string(rest)
}

// TestPrepareFixture: the sample a cron job would pipe into sendmail -t.
func TestPrepareFixture(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "messages", "sendmail-t.eml"))
	if err != nil {
		t.Fatal(err)
	}
	h, rcpts, body := prepare(t, string(raw), Options{From: "app@localhost", Extract: true})
	// A bare name stays as it is, for the server to qualify.
	if want := []string{"bob@localhost", "carol", "dave@example.test", "erin@localhost"}; !slices.Equal(rcpts, want) {
		t.Errorf("recipients %q, want %q", rcpts, want)
	}
	for _, want := range []string{
		"From: Cron Daemon <cron@localhost>\r\n", "Subject: nightly backup report\r\n",
		"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n", "Message-ID: <QID@mx.example.org>\r\n",
	} {
		if !strings.Contains(h, want) {
			t.Errorf("header lacks %q:\n%s", want, h)
		}
	}
	if strings.Contains(h, "Bcc") || strings.Contains(h, "erin") {
		t.Errorf("Bcc left in the header:\n%s", h)
	}
	if !strings.HasSuffix(h, "\r\n\r\n") {
		t.Errorf("header does not end with a blank line: %q", h)
	}
	if !strings.HasPrefix(body, "The nightly backup finished.\r\n") || strings.Contains(strings.ReplaceAll(body, "\r\n", ""), "\n") {
		t.Errorf("body %q: want the original body with CRLF line ends", body)
	}
}

func TestPrepare(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		o        Options
		has      []string
		hasNot   []string
		rcpts    []string
		body     string
	}{
		{
			name: "adds From with the full name",
			in:   "Subject: hi\n\nhello\n",
			o:    Options{From: "app@example.org", FullName: "The App"},
			has:  []string{`From: "The App" <app@example.org>`, "Date: Tue, 01 Dec 2026 12:00:00 +0000", "Message-ID: <QID@mx.example.org>", "Subject: hi"},
			body: "hello\r\n",
		},
		{
			name:   "keeps what is there",
			in:     "From: a@b\nDate: Mon, 30 Nov 2026 10:00:00 +0000\nMessage-ID: <x@y>\n\nbody\n",
			o:      Options{From: "other@example.org"},
			has:    []string{"From: a@b", "Date: Mon, 30 Nov 2026 10:00:00 +0000", "Message-ID: <x@y>"},
			hasNot: []string{"other@example.org", "QID"},
			body:   "body\r\n",
		},
		{
			name:  "without -t the header gives no recipients and Bcc stays",
			in:    "To: x@example.org\nBcc: y@example.org\n\nbody\n",
			has:   []string{"Bcc: y@example.org"},
			rcpts: nil,
			body:  "body\r\n",
		},
		{
			name:   "-t reads To, Cc and Bcc, groups too",
			in:     "To: team: a@example.org, B <b@example.org>;\nCc: c@example.org\nBcc: d@example.org\n\nbody\n",
			o:      Options{Extract: true},
			hasNot: []string{"Bcc", "d@example.org"},
			rcpts:  []string{"a@example.org", "b@example.org", "c@example.org", "d@example.org"},
			body:   "body\r\n",
		},
		{
			name:  "-t takes bare local names, alone or in angle brackets",
			in:    "To: bob@localhost, carol\nCc: Dave <dave>, \"Smith, Erin\" <erin@example.org> (Erin, at work)\nBcc: frank.x\n\nbody\n",
			o:     Options{Extract: true},
			has:   []string{"To: bob@localhost, carol"},
			rcpts: []string{"bob@localhost", "carol", "dave", "erin@example.org", "frank.x"},
			body:  "body\r\n",
		},
		{
			name: "no header at all: all body",
			in:   "hello world\nsecond line\n",
			o:    Options{From: "app@example.org"},
			has:  []string{"From: <app@example.org>", "Date: Tue, 01 Dec 2026 12:00:00 +0000"},
			body: "hello world\r\nsecond line\r\n",
		},
		{
			name: "first line with a space before the colon is body",
			in:   "Dear Bob: hello\n",
			has:  []string{"Date: Tue, 01 Dec 2026 12:00:00 +0000"},
			body: "Dear Bob: hello\r\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, rcpts, body := prepare(t, tc.in, tc.o)
			for _, want := range tc.has {
				if !strings.Contains(h, want+"\r\n") {
					t.Errorf("header lacks %q:\n%s", want, h)
				}
			}
			for _, bad := range tc.hasNot {
				if strings.Contains(h, bad) {
					t.Errorf("header has %q:\n%s", bad, h)
				}
			}
			if !slices.Equal(rcpts, tc.rcpts) {
				t.Errorf("recipients %q, want %q", rcpts, tc.rcpts)
			}
			if body != tc.body {
				t.Errorf("body %q, want %q", body, tc.body)
			}
		})
	}
}

func TestPrepareBadHeader(t *testing.T) {
	for _, to := range []string{"<unterminated", "bob@localhost, carol@", "carol, .dave", "carol, da ve", "team: carol;"} {
		br := bufio.NewReader(strings.NewReader("To: " + to + "\r\n\r\nbody\r\n"))
		if _, rcpts, err := Prepare(br, Options{Extract: true, Now: now}); err == nil {
			t.Errorf("Prepare -t with To: %s succeeded: %q", to, rcpts)
		}
	}
}
