package mailbox

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestHeadCapture(t *testing.T) {
	long := "X-Long: " + strings.Repeat("a", maxHead) + "\r\n"
	for _, tc := range []struct {
		name, body string
		want       string // "" for none
	}{
		{"crlf", "Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\n\r\nmore\r\n", "Subject: hi\r\nFrom: a@b\r\n\r\n"},
		{"lf", "Subject: hi\n\nbody\n", "Subject: hi\n\n"},
		{"folded", "Subject: a\r\n b\r\nTo: c\r\n\r\nx", "Subject: a\r\n b\r\nTo: c\r\n\r\n"},
		{"empty header", "\r\nbody\r\n", "\r\n"},
		{"empty header lf", "\nbody", "\n"},
		{"all header", "Subject: only\r\n", "Subject: only\r\n"},
		{"all header no eol", "Subject: only", "Subject: only"},
		{"cr alone is not a blank line", "A: 1\r\n\r\r\nB: 2\r\n\r\nbody", "A: 1\r\n\r\r\nB: 2\r\n\r\n"},
		{"header over the limit", long + "\r\nbody", ""},
		{"all header over the limit", long, ""},
		{"empty body", "", ""},
		{"blank line at the limit", strings.Repeat("A: b\r\n", (maxHead-2)/6) + "\r\nbody", strings.Repeat("A: b\r\n", (maxHead-2)/6) + "\r\n"},
	} {
		for _, r := range []struct {
			name string
			wrap func(io.Reader) io.Reader
		}{{"whole", func(r io.Reader) io.Reader { return r }}, {"byte by byte", iotest.OneByteReader}} {
			h := &headCapture{r: r.wrap(strings.NewReader(tc.body))}
			got, err := io.ReadAll(h)
			if err != nil || string(got) != tc.body {
				t.Fatalf("%s/%s: read %q, %v: the body must pass through unchanged", tc.name, r.name, got, err)
			}
			if head := h.head(int64(len(got))); string(head) != tc.want || (tc.want == "") != (head == nil) {
				t.Errorf("%s/%s: head = %.60q, want %.60q", tc.name, r.name, head, tc.want)
			}
		}
	}
}
