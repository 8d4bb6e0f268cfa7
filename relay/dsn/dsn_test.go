package dsn_test

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"github.com/relaymail/relay/relay/dsn"
	"github.com/relaymail/relay/spool"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/dsn")

const original = "Received: from client.a.test by relay.a.test; Sun, 1 Mar 2026 12:00:00 +0000\r\n" +
	"From: Alice <alice@a.test>\r\n" +
	"To: bob@b.test\r\n" +
	"Subject: quarterly report\r\n" +
	"Message-Id: <q1@a.test>\r\n" +
	"\r\n" +
	"The numbers are in.\r\n" +
	"\r\n" +
	"Regards, Alice\r\n"

const originalUTF8 = "From: Jöran <jöran@a.test>\r\n" +
	"To: zoë@b.test\r\n" +
	"Subject: grüße\r\n" +
	"\r\n" +
	"Hallo Zoë.\r\n"

var (
	arrived = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	now     = time.Date(2026, 3, 1, 16, 5, 0, 0, time.UTC)
)

// report is a parsed DSN.
type report struct {
	header message.Header
	parts  []part
	// perMessage and perRcpt are the blocks of the status part.
	perMessage textproto.Header
	perRcpt    []textproto.Header
}

type part struct {
	mediaType string
	body      []byte
}

// parse reads a DSN back with go-message and fails the test unless it is a
// multipart/report with report-type delivery-status and three parts, the
// second a status whose blocks parse as header sections (RFC 3464 §2.1).
func parse(t *testing.T, raw []byte) report {
	t.Helper()
	e, err := message.Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("message.Read: %v\n%s", err, raw)
	}
	var r report
	r.header = e.Header
	mt, params, err := e.Header.ContentType()
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q %v (%v), want multipart/report; report-type=delivery-status", mt, params, err)
	}
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatal("no multipart reader")
	}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("NextPart: %v", err)
		}
		pt, _, _ := p.Header.ContentType()
		b, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatalf("read part %s: %v", pt, err)
		}
		r.parts = append(r.parts, part{pt, b})
	}
	if len(r.parts) != 3 {
		t.Fatalf("%d parts, want 3 (text, status, original)", len(r.parts))
	}
	br := bufio.NewReader(bytes.NewReader(r.parts[1].body))
	r.perMessage, err = textproto.ReadHeader(br)
	if err != nil {
		t.Fatalf("per-message fields: %v\n%s", err, r.parts[1].body)
	}
	for {
		if _, err := br.Peek(1); err == io.EOF {
			break
		}
		h, err := textproto.ReadHeader(br)
		if err != nil {
			t.Fatalf("per-recipient fields: %v\n%s", err, r.parts[1].body)
		}
		r.perRcpt = append(r.perRcpt, h)
	}
	return r
}

// fields checks that h has exactly want (field -> value; "" means absent).
func fields(t *testing.T, what string, h textproto.Header, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("%s: %s = %q, want %q", what, k, got, v)
		}
	}
}

// golden compares raw, with the random MIME boundary made fixed, to
// testdata/dsn/name, or rewrites it under -update.
func golden(t *testing.T, name string, raw []byte) {
	t.Helper()
	b := regexp.MustCompile(`boundary=([0-9a-zA-Z'()+_,./:=?-]+)`).FindSubmatch(raw)
	if b == nil {
		t.Fatalf("no boundary in\n%s", raw)
	}
	norm := bytes.ReplaceAll(raw, b[1], []byte("BOUNDARY"))
	path := filepath.Join("..", "..", "testdata", "dsn", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, norm, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(norm, want) {
		t.Errorf("%s differs from the golden file (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", name, norm, want)
	}
}

func build(t *testing.T, r *dsn.Report, orig string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := dsn.Build(&buf, r, strings.NewReader(orig)); err != nil {
		t.Fatalf("Build: %v", err)
	}
	return buf.Bytes()
}

func failedReport(ret string) *dsn.Report {
	return &dsn.Report{
		ReportingMTA: "relay.a.test", To: "alice@a.test", QueueID: "01JQUEUEID", EnvID: "env-77",
		Arrived: arrived, Ret: ret, Now: now,
		Recipients: []dsn.Recipient{
			{Address: "bob@b.test", ORcpt: "rfc822;Bob@B.test", Action: dsn.Failed,
				Reply: spool.NewReply(550, "5.1.1", "no such user"), RemoteMTA: "mx.b.test", LastAttempt: now},
			{Address: "carol@c.test", Action: dsn.Failed, Expired: true,
				Reply:       spool.TempReply("4.4.1", "connection refused by\r\n  mx.c.test[192.0.2.25]:25"),
				LastAttempt: now},
		},
	}
}

func TestFailedHeadersOnly(t *testing.T) {
	raw := build(t, failedReport("HDRS"), original)
	golden(t, "failed-hdrs.eml", raw)
	r := parse(t, raw)
	fields(t, "header", r.header.Header, map[string]string{
		"From":           "Mail Delivery System <MAILER-DAEMON@relay.a.test>",
		"To":             "<alice@a.test>",
		"Subject":        "Undelivered Mail Returned to Sender",
		"Auto-Submitted": "auto-replied",
		"Date":           "Sun, 01 Mar 2026 16:05:00 +0000",
		"MIME-Version":   "1.0",
	})
	if r.parts[0].mediaType != "text/plain" || r.parts[1].mediaType != "message/delivery-status" || r.parts[2].mediaType != "text/rfc822-headers" {
		t.Errorf("parts %s, %s, %s; want text/plain, message/delivery-status, text/rfc822-headers",
			r.parts[0].mediaType, r.parts[1].mediaType, r.parts[2].mediaType)
	}
	for _, want := range []string{"relay.a.test", "<bob@b.test>: 550 5.1.1 no such user", "<carol@c.test>: delivery time expired; last reply: 451 4.4.1 connection refused by mx.c.test[192.0.2.25]:25"} {
		if !strings.Contains(string(r.parts[0].body), want) {
			t.Errorf("human-readable part lacks %q:\n%s", want, r.parts[0].body)
		}
	}
	fields(t, "per-message", r.perMessage, map[string]string{
		"Reporting-MTA":        "dns; relay.a.test",
		"Original-Envelope-Id": "env-77",
		"Arrival-Date":         "Sun, 01 Mar 2026 12:00:00 +0000",
		"Final-Recipient":      "",
	})
	if len(r.perRcpt) != 2 {
		t.Fatalf("%d per-recipient blocks, want 2", len(r.perRcpt))
	}
	fields(t, "bob", r.perRcpt[0], map[string]string{
		"Original-Recipient": "rfc822; Bob@B.test",
		"Final-Recipient":    "rfc822; bob@b.test",
		"Action":             "failed",
		"Status":             "5.1.1",
		"Remote-MTA":         "dns; mx.b.test",
		"Diagnostic-Code":    "smtp; 550 5.1.1 no such user",
		"Last-Attempt-Date":  "Sun, 01 Mar 2026 16:05:00 +0000",
		"Will-Retry-Until":   "",
	})
	fields(t, "carol", r.perRcpt[1], map[string]string{
		"Original-Recipient": "",
		"Final-Recipient":    "rfc822; carol@c.test",
		"Action":             "failed",
		"Status":             "5.4.7",
		"Remote-MTA":         "",
		// The last reply, a multi-line one folded into one line.
		"Diagnostic-Code": "smtp; 451 4.4.1 connection refused by mx.c.test[192.0.2.25]:25",
	})
	hdr := original[:strings.Index(original, "\r\n\r\n")+4]
	if string(r.parts[2].body) != hdr {
		t.Errorf("RET=HDRS returned %q, want the header section %q", r.parts[2].body, hdr)
	}
}

func TestFailedFull(t *testing.T) {
	for _, ret := range []string{"FULL", "full"} {
		raw := build(t, failedReport(ret), original)
		if ret == "FULL" {
			golden(t, "failed-full.eml", raw)
		}
		r := parse(t, raw)
		if r.parts[2].mediaType != "message/rfc822" || string(r.parts[2].body) != original {
			t.Errorf("RET=%s: third part %s %q, want message/rfc822 with the whole original", ret, r.parts[2].mediaType, r.parts[2].body)
		}
	}
	// No RET means headers only (RFC 3461 §4.3 leaves it to the MTA).
	r := parse(t, build(t, failedReport(""), original))
	if r.parts[2].mediaType != "text/rfc822-headers" {
		t.Errorf("no RET: third part %s, want text/rfc822-headers", r.parts[2].mediaType)
	}
}

func TestDelayed(t *testing.T) {
	rep := &dsn.Report{
		ReportingMTA: "relay.a.test", To: "alice@a.test", QueueID: "01JQUEUEID", Arrived: arrived, Now: now, Ret: "HDRS",
		Recipients: []dsn.Recipient{{Address: "bob@b.test", Action: dsn.Delayed,
			Reply: spool.TempReply("4.4.1", "connection refused by mx.b.test[192.0.2.25]:25"), RemoteMTA: "mx.b.test",
			LastAttempt: now, WillRetryUntil: arrived.Add(5 * 24 * time.Hour)}},
	}
	raw := build(t, rep, original)
	golden(t, "delayed.eml", raw)
	r := parse(t, raw)
	if got := r.header.Get("Subject"); !strings.Contains(got, "Delayed") {
		t.Errorf("Subject %q, want it to say the mail is delayed", got)
	}
	if !strings.Contains(string(r.parts[0].body), "retried") {
		t.Errorf("human-readable part does not say it will be retried:\n%s", r.parts[0].body)
	}
	fields(t, "per-message", r.perMessage, map[string]string{"Original-Envelope-Id": "", "Reporting-MTA": "dns; relay.a.test"})
	fields(t, "bob", r.perRcpt[0], map[string]string{
		"Action":           "delayed",
		"Status":           "4.4.1",
		"Will-Retry-Until": "Fri, 06 Mar 2026 12:00:00 +0000",
		"Diagnostic-Code":  "smtp; 451 4.4.1 connection refused by mx.b.test[192.0.2.25]:25",
	})
}

func TestRelayedAndDelivered(t *testing.T) {
	rep := &dsn.Report{
		ReportingMTA: "relay.a.test", To: "alice@a.test", QueueID: "01JQUEUEID", Arrived: arrived, Now: now, Ret: "HDRS",
		Recipients: []dsn.Recipient{
			{Address: "bob@b.test", Action: dsn.Relayed, RemoteMTA: "mx.b.test", LastAttempt: now},
			{Address: "ann@a.test", Action: dsn.Delivered, LastAttempt: now},
		},
	}
	raw := build(t, rep, original)
	golden(t, "relayed.eml", raw)
	r := parse(t, raw)
	if got := r.header.Get("Subject"); !strings.Contains(got, "Successful") {
		t.Errorf("Subject %q", got)
	}
	fields(t, "bob", r.perRcpt[0], map[string]string{"Action": "relayed", "Status": "2.0.0", "Remote-MTA": "dns; mx.b.test", "Diagnostic-Code": ""})
	fields(t, "ann", r.perRcpt[1], map[string]string{"Action": "delivered", "Status": "2.0.0", "Remote-MTA": ""})
}

// TestUTF8: a report on an SMTPUTF8 message uses the RFC 6533 types and
// utf-8 address types.
func TestUTF8(t *testing.T) {
	for _, ret := range []string{"HDRS", "FULL"} {
		rep := &dsn.Report{
			ReportingMTA: "relay.a.test", To: "jöran@a.test", QueueID: "01JQUEUEID", Arrived: arrived, Now: now, Ret: ret, UTF8: true,
			Recipients: []dsn.Recipient{{Address: "zoë@b.test", ORcpt: "utf-8;zoë@b.test", Action: dsn.Failed,
				Reply: spool.NewReply(550, "5.1.1", "unknown"), RemoteMTA: "mx.b.test", LastAttempt: now}},
		}
		raw := build(t, rep, originalUTF8)
		golden(t, "utf8-"+strings.ToLower(ret)+".eml", raw)
		r := parse(t, raw)
		wantOrig := map[string]string{"HDRS": "message/global-headers", "FULL": "message/global"}[ret]
		if r.parts[1].mediaType != "message/global-delivery-status" || r.parts[2].mediaType != wantOrig {
			t.Errorf("RET=%s: parts %s, %s; want message/global-delivery-status, %s", ret, r.parts[1].mediaType, r.parts[2].mediaType, wantOrig)
		}
		fields(t, "zoë", r.perRcpt[0], map[string]string{
			"Final-Recipient":    "utf-8; zoë@b.test",
			"Original-Recipient": "utf-8; zoë@b.test",
		})
		if got := r.header.Get("To"); got != "<jöran@a.test>" {
			t.Errorf("To %q", got)
		}
	}
}

// TestHeaderOnlyOriginal: an original without a body (no blank line) is
// returned whole under RET=HDRS.
func TestHeaderOnlyOriginal(t *testing.T) {
	orig := "Subject: only a header\r\nFrom: alice@a.test\r\n"
	r := parse(t, build(t, failedReport("HDRS"), orig))
	if string(r.parts[2].body) != orig {
		t.Errorf("third part %q, want %q", r.parts[2].body, orig)
	}
}

// TestStatusFromReply: the Status is the reply's enhanced code, or its
// class when the server gave none; the Diagnostic-Code is the reply as
// received (RFC 3464 §2.3.4, §2.3.6).
func TestStatusFromReply(t *testing.T) {
	for _, tc := range []struct {
		action       dsn.Action
		reply        spool.Reply
		expired      bool
		status, diag string
	}{
		{dsn.Failed, spool.NewReply(550, "5.1.1", "no such user"), false, "5.1.1", "smtp; 550 5.1.1 no such user"},
		{dsn.Failed, spool.NewReply(550, "", "no such user"), false, "5.0.0", "smtp; 550 no such user"},
		{dsn.Failed, spool.NewReply(556, "5.1.10", "b.test does not accept mail (null MX)"), false, "5.1.10", "smtp; 556 5.1.10 b.test does not accept mail (null MX)"},
		{dsn.Failed, spool.NewReply(421, "", "closing"), true, "5.4.7", "smtp; 421 closing"},
		{dsn.Delayed, spool.NewReply(421, "", "closing"), false, "4.0.0", "smtp; 421 closing"},
		{dsn.Delayed, spool.TempReply("4.3.0", "temporary local problem"), false, "4.3.0", "smtp; 451 4.3.0 temporary local problem"},
		{dsn.Relayed, spool.Reply{}, false, "2.0.0", ""},
	} {
		rep := failedReport("HDRS")
		rep.Recipients = []dsn.Recipient{{Address: "bob@b.test", Action: tc.action, Reply: tc.reply, Expired: tc.expired}}
		r := parse(t, build(t, rep, original))
		fields(t, tc.reply.String(), r.perRcpt[0], map[string]string{"Status": tc.status, "Diagnostic-Code": tc.diag})
	}
}
