package imapd

import (
	"bufio"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// Date values that take each path of headerDate, and some that net/mail
// reads only with its later layouts or not at all.
var envelopeDates = []string{
	"Mon, 2 Jan 2006 15:04:05 -0700",
	"Tue, 02 Jan 2024 09:08:07 +0100",
	"Wed, 3 Jan 2024 09:08:07 +0000 (UTC)",
	"Thu, 4 Jan 2024 09:08 -0500",
	"5 Jan 2024 09:08:07 -0500",
	"Fri, 5 Jan 24 09:08:07 GMT",
	"Sat, 6 Jan 2024 09:08:07 EST",
	"Sun, 7 Jan 2024 09:08:07 UT",
	"Mon,  8 Jan 2024 09:08:07 -0700",
	"Mon, 8 Jan 2024 09:08:07 -0700 ",
	"Xyz, 8 Jan 2024 09:08:07 -0700",
	"Mon, 31 Feb 2024 09:08:07 -0700",
	"Mon, 8 Jan 2024 25:08:07 -0700",
	"yesterday",
	"",
}

func headerOf(t testing.TB, text string) textproto.Header {
	t.Helper()
	h, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(text)))
	if err != nil {
		t.Fatalf("ReadHeader(%q): %v", text, err)
	}
	return h
}

// envelope answers what imapserver.ExtractEnvelope answers, for every Date
// above and for the sample messages.
func TestEnvelopeAsLibrary(t *testing.T) {
	var headers []string
	for _, d := range envelopeDates {
		headers = append(headers, "Date: "+d+"\r\nSubject: s\r\nFrom: A <a@example.net>\r\nTo: b@example.net, c@example.net\r\nMessage-Id: <1@x>\r\n\r\n")
	}
	headers = append(headers, "Subject: no date\r\n\r\n", "Date: Mon, 2 Jan 2006 15:04:05 -0700\r\nDate: Tue, 3 Jan 2006 15:04:05 -0700\r\n\r\n")
	files, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "imap", "*.eml"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		headers = append(headers, strings.ReplaceAll(string(b), "\n", "\r\n"))
	}
	for _, text := range headers {
		h := headerOf(t, text)
		date := h.Get("Date")
		want := imapserver.ExtractEnvelope(h)
		got := envelope(h)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("header %q:\nenvelope          %+v\nExtractEnvelope   %+v", text[:min(len(text), 60)], got, want)
		}
		if h.Get("Date") != date {
			t.Errorf("envelope took the Date out of the header it was given")
		}
	}
}

// headerDate gives what mail.Header.Date gives, the error included, which
// SEARCH SENTBEFORE and SENTSINCE depend on.
func TestHeaderDateAsLibrary(t *testing.T) {
	for _, d := range envelopeDates {
		h := headerOf(t, "Date: "+d+"\r\n\r\n")
		want, wantErr := (&mail.Header{Header: message.Header{Header: h}}).Date()
		got, err := headerDate(h.Get("Date"))
		if !reflect.DeepEqual(got, want) || (err == nil) != (wantErr == nil) {
			t.Errorf("headerDate(%q) = %v, %v; mail.Header.Date: %v, %v", d, got, err, want, wantErr)
		}
	}
}

func BenchmarkEnvelope(b *testing.B) {
	h := headerOf(b, "Date: Tue, 02 Jan 2024 09:08:07 +0100\r\nSubject: a subject line\r\nFrom: A <a@example.net>\r\nTo: b@example.net\r\nMessage-Id: <1@x>\r\n\r\n")
	b.Run("library", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			imapserver.ExtractEnvelope(h)
		}
	})
	b.Run("relay", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			envelope(h)
		}
	})
}
