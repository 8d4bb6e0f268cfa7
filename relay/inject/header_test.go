package inject

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

var stamp = Stamp{Date: now, MessageID: "QID@mx.example.org"}

const (
	dateLine = "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n"
	idLine   = "Message-ID: <QID@mx.example.org>\r\n"
)

func TestComplete(t *testing.T) {
	long := "X-Long: " + strings.Repeat("x", 200) + "\r\n"
	for _, tc := range []struct{ name, in, want string }{
		{"adds both at the end of the header", "From: a@b\r\nSubject: x\r\n\r\nbody\r\n",
			"From: a@b\r\nSubject: x\r\n" + dateLine + idLine + "\r\nbody\r\n"},
		{"keeps what is there, in any case", "date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMESSAGE-ID: <x@y>\r\n\r\nbody\r\n",
			"date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMESSAGE-ID: <x@y>\r\n\r\nbody\r\n"},
		{"adds only what is missing", "Message-Id : <x@y>\r\n\r\nbody\r\n",
			"Message-Id : <x@y>\r\n" + dateLine + "\r\nbody\r\n"},
		{"folded fields", "Subject: one\r\n two\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\nb\r\n",
			"Subject: one\r\n two\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n" + idLine + "\r\nb\r\n"},
		{"fields in the body do not count", "Subject: x\r\n\r\nDate: later\r\nMessage-ID: <no>\r\n",
			"Subject: x\r\n" + dateLine + idLine + "\r\nDate: later\r\nMessage-ID: <no>\r\n"},
		{"no header: they become the header", "hello\r\nworld\r\n", dateLine + idLine + "\r\nhello\r\nworld\r\n"},
		{"a line that is no field ends the header", "Subject: x\r\nDear Bob: hi\r\n",
			"Subject: x\r\n" + dateLine + idLine + "\r\nDear Bob: hi\r\n"},
		{"a folded first line is no field", " x: y\r\n", dateLine + idLine + "\r\n x: y\r\n"},
		{"header only", "Subject: x\r\n", "Subject: x\r\n" + dateLine + idLine},
		{"empty", "", dateLine + idLine},
		{"a last line without a line end is left alone", "Subject: x", "Subject: x"},
		{"a header over the limit passes unchanged", strings.Repeat(long, 6) + "\r\nbody\r\n", strings.Repeat(long, 6) + "\r\nbody\r\n"},
		{"one line over the limit", "X: " + strings.Repeat("y", 2000) + "\r\n\r\nb\r\n", "X: " + strings.Repeat("y", 2000) + "\r\n\r\nb\r\n"},
		{"LF line ends", "Subject: x\n\nbody\n", "Subject: x\n" + dateLine + idLine + "\nbody\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := io.ReadAll(Complete(iotest.OneByteReader(strings.NewReader(tc.in)), stamp, 1000))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("Complete(%q)\n got %q\nwant %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestCompletePassesErrors: an error of the source, in the header or the
// body, reaches the reader of the completed message.
func TestCompletePassesErrors(t *testing.T) {
	boom := errors.New("boom")
	for _, before := range []string{"", "Subject: x\r\n", "Subject: x\r\n\r\nbody"} {
		_, err := io.ReadAll(Complete(io.MultiReader(strings.NewReader(before), iotest.ErrReader(boom)), stamp, 1000))
		if !errors.Is(err, boom) {
			t.Errorf("after %q: err = %v, want %v", before, err, boom)
		}
	}
}

// FuzzComplete: whatever the input, the output is the input with at most
// the missing fields (and the blank line after them, where the input has no
// header) put in at one place.
func FuzzComplete(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nbody\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := io.ReadAll(Complete(strings.NewReader(string(in)), stamp, 512))
		if err != nil {
			t.Fatal(err)
		}
		if string(out) == string(in) {
			return
		}
		for _, add := range []string{dateLine + idLine, dateLine, idLine} {
			i := strings.Index(string(out), add)
			if i < 0 {
				continue
			}
			rest := string(out[:i]) + string(out[i+len(add):])
			if rest == string(in) || rest[:i]+strings.TrimPrefix(rest[i:], "\r\n") == string(in) {
				return
			}
		}
		t.Fatalf("Complete(%q) = %q: not the input with the fields put in", in, out)
	})
}
