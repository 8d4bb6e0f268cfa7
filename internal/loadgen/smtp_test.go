package loadgen

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func smtpConfig(addr string) SMTPConfig {
	return SMTPConfig{
		Addr:        addr,
		Concurrency: 5,
		Messages:    200,
		Mix:         Mix{{1024, 3}, {8192, 1}},
		Users:       3,
		Domain:      "localhost",
		Rcpts:       2,
		From:        "bench@localhost",
		PerConn:     7,
		Timeout:     10 * time.Second,
	}
}

func TestRunSMTP(t *testing.T) {
	for _, pipelined := range []bool{false, true} {
		name := map[bool]string{false: "lockstep", true: "pipelined"}[pipelined]
		t.Run(name, func(t *testing.T) {
			s := &sink{}
			addr, ln := startSMTP(t, s)
			cfg := smtpConfig(addr)
			cfg.Pipelining = pipelined
			sum, err := RunSMTP(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			msgs, rcpts := s.counts()
			if sum.Messages != 200 || sum.Failed != 0 || msgs != 200 || rcpts != 400 {
				t.Errorf("summary %d accepted %d failed; server got %d messages, %d recipients; want 200, 0, 200, 400",
					sum.Messages, sum.Failed, msgs, rcpts)
			}
			if sum.Pipelining != pipelined || ln.sawPipelining() != pipelined {
				t.Errorf("pipelining: summary %v, seen by the server %v; want %v", sum.Pipelining, ln.sawPipelining(), pipelined)
			}
			// 200 messages, at most 7 a connection, over 5 workers.
			if sum.Connections < 29 || sum.Connections > 29+5 {
				t.Errorf("%d connections for 200 messages at 7 a connection", sum.Connections)
			}
			if sum.Latency.P50 <= 0 || sum.Latency.P50 > sum.Latency.P99 || sum.MsgsPerSec <= 0 || sum.Bytes < 200*1000 {
				t.Errorf("figures %+v", sum)
			}
		})
	}
}

// Refused recipients: a message whose only recipient is refused fails with
// the refusal's code; one with another recipient goes through.
func TestRunSMTPRefusals(t *testing.T) {
	for _, pipelined := range []bool{false, true} {
		s := &sink{reject: map[string]bool{"user1": true}}
		addr, _ := startSMTP(t, s)
		cfg := smtpConfig(addr)
		cfg.Pipelining = pipelined
		cfg.Users, cfg.Rcpts, cfg.Messages = 2, 1, 100
		sum, err := RunSMTP(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		msgs, _ := s.counts()
		if sum.Messages != 50 || sum.Failed != 50 || sum.Errors["550"] != 50 || sum.RcptErrors["550"] != 50 || msgs != 50 {
			t.Errorf("pipelining %v: %d accepted, %d failed, errors %v, rcpt errors %v, server got %d",
				pipelined, sum.Messages, sum.Failed, sum.Errors, sum.RcptErrors, msgs)
		}
		cfg.Users, cfg.Rcpts = 3, 3 // user0, user1, user2: one of three refused
		sum, err = RunSMTP(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if sum.Messages != 100 || sum.Failed != 0 || sum.RcptErrors["550"] != 100 {
			t.Errorf("pipelining %v, 3 recipients: %d accepted, %d failed, rcpt errors %v", pipelined, sum.Messages, sum.Failed, sum.RcptErrors)
		}
	}
}

func TestRunSMTPAuth(t *testing.T) {
	s := &sink{needAuth: true}
	addr, _ := startSMTP(t, s)
	cfg := smtpConfig(addr)
	cfg.Messages = 20
	sum, err := RunSMTP(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Messages != 0 || sum.Errors["502"] != 20 {
		t.Errorf("without AUTH: %d accepted, errors %v; want 0 and 502=20", sum.Messages, sum.Errors)
	}
	cfg.AuthUser, cfg.AuthPass = "user0@localhost", "secret"
	if sum, err = RunSMTP(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	if sum.Messages != 20 || !s.users["user0@localhost"] {
		t.Errorf("with AUTH: %d accepted, users %v", sum.Messages, s.users)
	}
	cfg.AuthPass = "wrong"
	if _, err := RunSMTP(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "535") {
		t.Errorf("bad password: %v, want a 535 failure", err)
	}
}

func TestRunSMTPNoServer(t *testing.T) {
	addr, _ := startSMTP(t, &sink{})
	cfg := smtpConfig(addr)
	cfg.Addr = "127.0.0.1:1"
	if _, err := RunSMTP(t.Context(), cfg); err == nil {
		t.Error("run against a closed port succeeded")
	}
}

// End to end over IMAP: the SMTP sink delivers into go-imap's in-memory
// server, which already holds some messages (the baseline).
func TestRunSMTPWaitIMAP(t *testing.T) {
	logins := []string{"user0@localhost", "user1@localhost", "user2@localhost"}
	m := startIMAP(t, logins, "pw")
	m.deliver(t, logins[:1], []byte("Subject: old\r\n\r\nold\r\n"))
	s := &sink{}
	var mu sync.Mutex
	s.deliver = func(rcpts []string, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		m.deliver(t, rcpts, body)
	}
	addr, _ := startSMTP(t, s)
	cfg := smtpConfig(addr)
	cfg.Messages, cfg.Rcpts = 60, 1
	cfg.Wait = &IMAPWaiter{Addr: m.addr, Logins: logins, Pass: "pw", Timeout: 10 * time.Second}
	sum, err := RunSMTP(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if sum.EndToEnd == nil || sum.EndToEnd.MsgsPerSec <= 0 || sum.EndToEnd.Seconds < sum.Seconds {
		t.Errorf("end to end %+v, sending took %v s", sum.EndToEnd, sum.Seconds)
	}
	if n := m.inboxCount(t, logins[0]); n != 21 {
		t.Errorf("user0 has %d messages, want 21", n)
	}
}

// A wait that cannot be met times out with the count it saw.
func TestIMAPWaiterTimeout(t *testing.T) {
	logins := []string{"user0@localhost"}
	m := startIMAP(t, logins, "pw")
	w := &IMAPWaiter{Addr: m.addr, Logins: logins, Pass: "pw", Timeout: 300 * time.Millisecond}
	if err := w.Baseline(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.deliver(t, logins, []byte("Subject: x\r\n\r\nx\r\n"))
	err := w.Wait(t.Context(), []int64{2}, nil)
	if err == nil || !strings.Contains(err.Error(), "1 of 2") {
		t.Errorf("Wait = %v, want a timeout after 1 of 2", err)
	}
}

// End to end into Maildirs: the sink writes one file per recipient.
func TestRunSMTPWaitMaildir(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"user0/new", "user0/cur", "user0/tmp", "user1/new", "user1/cur"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "user0/cur/old"), nil, 0o644)
	os.WriteFile(filepath.Join(root, "user0/tmp/partial"), nil, 0o644)
	os.WriteFile(filepath.Join(root, "user0/dovecot-uidlist"), nil, 0o644)
	if n, err := CountMaildir(root); err != nil || n != 1 {
		t.Fatalf("CountMaildir = %d, %v; want 1", n, err)
	}
	if n, err := CountMaildir(filepath.Join(root, "absent")); err != nil || n != 0 {
		t.Errorf("CountMaildir of a missing dir = %d, %v", n, err)
	}
	s := &sink{}
	var mu sync.Mutex
	seq := 0
	s.deliver = func(rcpts []string, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range rcpts {
			seq++
			local, _, _ := strings.Cut(r, "@")
			os.WriteFile(filepath.Join(root, local, "new", "m"+strconv.Itoa(seq)), body, 0o644)
		}
	}
	addr, _ := startSMTP(t, s)
	cfg := smtpConfig(addr)
	cfg.Messages, cfg.Users, cfg.Rcpts = 40, 2, 2
	cfg.Wait = &MaildirWaiter{Root: root, Timeout: 10 * time.Second}
	sum, err := RunSMTP(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := CountMaildir(root); sum.EndToEnd == nil || n != 81 {
		t.Errorf("end to end %+v, %d files, want 81", sum.EndToEnd, n)
	}
}
