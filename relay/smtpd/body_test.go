package smtpd_test

import (
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/metrics"
	"github.com/relaymail/relay/relay/smtpd"
	"github.com/relaymail/relay/spool"
)

// sendRaw runs MAIL and RCPT on rc and sends data with DATA (as it goes on
// the wire, ending in CRLF; the end of data is added) or as one BDAT LAST
// chunk; it returns the last line of the final reply.
func sendRaw(rc *rawConn, bdat bool, data string) string {
	rc.t.Helper()
	rc.expect("MAIL FROM:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<b@localhost>", "250 ")
	if bdat {
		rc.write("BDAT " + strconv.Itoa(len(data)) + " LAST\r\n" + data)
		return rc.reply()
	}
	rc.expect("DATA", "354 ")
	rc.write(data + ".\r\n")
	return rc.reply()
}

// TestNormalizeBareLF: with bare-newline = normalize each bare LF is stored
// as CRLF, so that Python's smtplib.sendmail(msg.as_bytes()) and the like
// get through; in DATA the lines after a bare LF lose their transparency
// dot (RFC 5321 §4.5.2) like those after a CRLF, in BDAT nothing is
// dot-stuffed. A bare LF where it could end the data for another server
// and a bare CR are still refused, and reject refuses every bare LF.
func TestNormalizeBareLF(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		bdat  bool
		mode  smtpd.BareNewline
		data  string
		reply string
		want  string // stored after the Received: header, when taken
	}{
		{"DATA as smtplib sends msg.as_bytes()", false, smtpd.NormalizeBareLF,
			"From: a@example.net\nSubject: x\n\n..\n...two\nend\n\r\n", "250 2.0.0",
			"From: a@example.net\r\nSubject: x\r\n\r\n.\r\n..two\r\nend\r\n\r\n"},
		{"DATA mixed line ends", false, smtpd.NormalizeBareLF,
			"Subject: x\nX: y\r\n\r\na\nb\r\nc\n\r\n", "250 2.0.0", "Subject: x\r\nX: y\r\n\r\na\r\nb\r\nc\r\n\r\n"},
		{"DATA a transparency dot after a bare LF", false, smtpd.NormalizeBareLF,
			"Subject: x\n\n.x\r\n", "250 2.0.0", "Subject: x\r\n\r\nx\r\n"},
		{"DATA <LF>.<LF>", false, smtpd.NormalizeBareLF, "Subject: x\n\na\n.\nb\r\n", "550 5.6.0", ""},
		{"DATA <LF>.<CRLF>", false, smtpd.NormalizeBareLF, "Subject: x\n\na\n.\r\nb\r\n", "550 5.6.0", ""},
		{"DATA <CRLF>.<LF>", false, smtpd.NormalizeBareLF, "Subject: x\r\n\r\na\r\n.\nb\r\n", "550 5.6.0", ""},
		{"DATA bare CR", false, smtpd.NormalizeBareLF, "Subject: x\n\na\rb\r\n", "550 5.6.0", ""},
		{"BDAT bare LF, dots as they are", true, smtpd.NormalizeBareLF,
			"Subject: x\n\n..two\n.x\nend\n", "250 2.0.0", "Subject: x\r\n\r\n..two\r\n.x\r\nend\r\n"},
		{"BDAT an empty bare-LF line after a CRLF", true, smtpd.NormalizeBareLF,
			"Subject: x\r\n\nb\n", "250 2.0.0", "Subject: x\r\n\r\nb\r\n"},
		{"BDAT <CRLF>.<LF>", true, smtpd.NormalizeBareLF, "Subject: x\r\n\r\na\r\n.\nb", "550 5.6.0", ""},
		{"BDAT <LF>.<CRLF>", true, smtpd.NormalizeBareLF, "Subject: x\r\n\r\na\n.\r\nb", "550 5.6.0", ""},
		{"BDAT bare CR at the end", true, smtpd.NormalizeBareLF, "Subject: x\n\na\r", "550 5.6.0", ""},
		{"DATA reject", false, smtpd.RejectBareLF, "Subject: x\n\nb\r\n", "550 5.6.0", ""},
		{"BDAT reject", true, smtpd.RejectBareLF, "Subject: x\r\n\r\na\nb\r\n", "550 5.6.0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig()
			cfg.BareNewline = tt.mode
			s := startServer(t, cfg)
			rc := s.rawHello(t)
			if got := sendRaw(rc, tt.bdat, tt.data); !strings.HasPrefix(got, tt.reply) {
				t.Fatalf("got %q, want %q", got, tt.reply)
			}
			if !strings.HasPrefix(tt.reply, "250") {
				s.wantQueued(t, 0)
				rc.expect("NOOP", "250 ")
				return
			}
			s.wantBody(t, s.wantQueued(t, 1)[0], tt.want)
		})
	}
}

// TestNULRefused: RFC 5322 §2.2 and §3.5 allow no NUL octet in a message;
// one in the header or the body, by DATA or BDAT, gets 550 5.6.0 with either
// bare-newline setting, nothing is stored and the session goes on.
func TestNULRefused(t *testing.T) {
	t.Parallel()
	for _, mode := range bareNewlineModes {
		for _, bdat := range []bool{false, true} {
			for _, data := range []string{"Subject: a\x00b\r\n\r\nbody\r\n", "Subject: x\r\n\r\nbo\x00dy\r\n", "\x00"} {
				t.Run(fmt.Sprintf("%s/bdat=%v/%q", mode.name, bdat, data), func(t *testing.T) {
					t.Parallel()
					cfg := testConfig()
					cfg.BareNewline = mode.v
					s := startServer(t, cfg)
					rc := s.rawHello(t)
					if data == "\x00" && !bdat {
						data = "\x00\r\n"
					}
					if got := sendRaw(rc, bdat, data); got != "550 5.6.0 message contains a NUL octet, which is not allowed in mail" {
						t.Fatalf("got %q, want 550 5.6.0 for the NUL", got)
					}
					s.wantQueued(t, 0)
					if got := sendRaw(rc, bdat, "Subject: x\r\n\r\nbody\r\n"); !strings.HasPrefix(got, "250 2.0.0") {
						t.Fatalf("the next message on the session: %q", got)
					}
				})
			}
		}
	}
}

// TestQueuedReply: the reply to the end of data names the queue ID, as
// Postfix's does, for DATA, one BDAT chunk and several; it is a success,
// counted as an accepted message and never as a refusal, so a session may
// send more messages than max-errors.
func TestQueuedReply(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.MaxErrors = 2
	cfg.Metrics = metrics.New(nil)
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	var replies []string
	for i := range 3 {
		replies = append(replies, sendRaw(rc, false, fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i)))
	}
	replies = append(replies, sendRaw(rc, true, "Subject: 3\r\n\r\nbody\r\n"))
	rc.expect("MAIL FROM:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<b@localhost>", "250 ")
	rc.write("BDAT 14\r\nSubject: 4\r\n\r\n")
	if got := rc.reply(); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("first chunk: %q", got)
	}
	rc.write("BDAT 6 LAST\r\nbody\r\n")
	replies = append(replies, rc.reply())
	ms := s.wantQueued(t, 5)
	for _, m := range ms {
		_, rest := splitReceived(t, s.body(t, m.ID))
		n, _ := strconv.Atoi(strings.TrimPrefix(rest[:strings.Index(rest, "\r\n")], "Subject: "))
		if want := "250 2.0.0 OK: queued as " + m.ID; replies[n] != want {
			t.Errorf("message %d: reply %q, want %q", n, replies[n], want)
		}
	}
	rec := httptest.NewRecorder()
	metrics.Handler(cfg.Metrics, func() error { return nil }, nil).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if out := rec.Body.String(); !strings.Contains(out, "relay_messages_accepted_total 5\n") || strings.Contains(out, "relay_messages_rejected_total{") {
		t.Errorf("metrics after 5 accepted messages:\n%s", out)
	}
	rc.expect("NOOP", "250 ")
}

// TestSubmissionStamp: mail from an authenticated client gets the Date: and
// Message-ID: <QUEUEID@HOSTNAME> it lacks, at the end of its header section
// (RFC 6409 §8.2, §8.3), by DATA and BDAT; fields it has are kept; a header
// section too long to scan passes as it is; mail on the relay port, without
// AUTH, is stored as it came.
func TestSubmissionStamp(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	long := strings.Repeat("X-Long: "+strings.Repeat("x", 1000)+"\r\n", 110)
	const (
		date = "Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
		id   = "Message-ID: <given@example.net>\r\n"
	)
	tests := []struct {
		name        string
		auth, bdat  bool
		data        string
		date, msgID bool // added
		unchanged   bool
	}{
		{"DATA without both", true, false, "From: alice@localhost\r\nSubject: x\r\n\r\nbody\r\n", true, true, false},
		{"BDAT without both", true, true, "From: alice@localhost\r\nSubject: x\r\n\r\nbody\r\n", true, true, false},
		{"without Date", true, false, "Subject: x\r\n" + id + "\r\nbody\r\n", true, false, false},
		{"without Message-ID", true, false, "Subject: x\r\n" + date + "\r\nbody\r\n", false, true, false},
		{"with both", true, false, "Subject: x\r\n" + date + id + "\r\nbody\r\n", false, false, true},
		{"header too long to scan", true, false, long + "\r\nbody\r\n", false, false, true},
		{"relay port", false, false, "Subject: x\r\n\r\nbody\r\n", false, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, _ := f.config(tt.auth)
			s := startServer(t, cfg)
			rc := s.rawHello(t)
			from, rcpt := "a@example.net", subUser
			if tt.auth {
				rc.expect("AUTH PLAIN "+plainIR("", subUser, subPass), "235 ")
				from, rcpt = subUser, "b@example.net"
			}
			before := time.Now().Add(-time.Second)
			rc.expect("MAIL FROM:<"+from+">", "250 ")
			rc.expect("RCPT TO:<"+rcpt+">", "250 ")
			if tt.bdat {
				rc.write("BDAT " + strconv.Itoa(len(tt.data)) + " LAST\r\n" + tt.data)
			} else {
				rc.expect("DATA", "354 ")
				rc.write(tt.data + ".\r\n")
			}
			if got := rc.reply(); !strings.HasPrefix(got, "250 ") {
				t.Fatalf("end of data: %q", got)
			}
			m := s.wantQueued(t, 1)[0]
			if tt.unchanged {
				s.wantBody(t, m, tt.data)
				return
			}
			if m.Arrived.Before(before) {
				t.Errorf("arrival time %v is not now", m.Arrived)
			}
			s.wantBody(t, m, stampedWith(m, tt.data, tt.date, tt.msgID))
		})
	}
}

// stamped is body as submission stores it for message m, with the Date:
// and Message-ID: that the testConfig server adds.
func stamped(m *spool.Message, body string) string { return stampedWith(m, body, true, true) }

func stampedWith(m *spool.Message, body string, date, msgID bool) string {
	hdr, _, _ := strings.Cut(body, "\r\n\r\n")
	var add string
	if date {
		add += "Date: " + m.Arrived.Format("Mon, 02 Jan 2006 15:04:05 -0700") + "\r\n"
	}
	if msgID {
		add += "Message-ID: <" + m.ID + "@mx.relay.test>\r\n"
	}
	return hdr + "\r\n" + add + strings.TrimPrefix(body, hdr+"\r\n")
}
