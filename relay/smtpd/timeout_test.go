package smtpd_test

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// RFC 5321 §4.5.3.2 lets a server drop a client that stays silent too long;
// these tests use timeouts of a few hundred milliseconds and allow seconds
// for the disconnect, so they are not timing-sensitive.

// TestIdleClientDisconnected: a client that says nothing after the greeting,
// or nothing after EHLO, gets 421 4.4.2 and the connection closes.
func TestIdleClientDisconnected(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 300 * time.Millisecond
	s := startServer(t, cfg)
	for _, afterEHLO := range []bool{false, true} {
		var rc *rawConn
		if afterEHLO {
			rc = s.rawHello(t)
		} else {
			rc = s.rawDial(t)
		}
		start := time.Now()
		lines := rc.wantClosed(5 * time.Second)
		if len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "421 4.4.2") {
			t.Errorf("afterEHLO=%v: idle client got %q before the close, want 421 4.4.2", afterEHLO, lines)
		}
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Errorf("afterEHLO=%v: closed after %v, before the 300ms timeout", afterEHLO, d)
		}
	}
}

// TestSlowCommandsKeepConnection: the command timeout is per command, so a
// client that answers within it may take longer than it in total.
func TestSlowCommandsKeepConnection(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 400 * time.Millisecond
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	for range 4 {
		time.Sleep(150 * time.Millisecond)
		rc.expect("NOOP", "250 ")
	}
}

// trickleData starts a transaction on s, sends DATA and a few body bytes,
// then stops sending.
func trickleData(t *testing.T, s *testServer) *rawConn {
	t.Helper()
	rc := s.rawHello(t)
	rc.expect("MAIL FROM:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<b@localhost>", "250 ")
	rc.expect("DATA", "354 ")
	rc.write("S")
	time.Sleep(100 * time.Millisecond)
	rc.write("u")
	return rc
}

// TestDataIdleTimeout: a client that stops sending in the middle of DATA
// gets 451 4.4.2 (temporary: the message may be sent again), nothing is
// queued, and go-smtp #196 is avoided by hanging up rather than reading the
// rest of the body as commands.
func TestDataIdleTimeout(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 10 * time.Second
	cfg.DataIdleTimeout = 300 * time.Millisecond
	s := startServer(t, cfg)
	rc := trickleData(t, s)
	lines, err := rc.readReply(5 * time.Second)
	if err != nil {
		t.Fatalf("no reply to the stalled DATA: %v", err)
	}
	if got := lines[len(lines)-1]; !strings.HasPrefix(got, "451 4.4.2") {
		t.Fatalf("stalled DATA: got %q, want 451 4.4.2", got)
	}
	s.wantQueued(t, 0)
}

// TestDataIdleTimeoutCloses: after the 451 4.4.2 the connection closes
// (within a few seconds, far below the 10s command timeout).
func TestDataIdleTimeoutCloses(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 10 * time.Second
	cfg.DataIdleTimeout = 300 * time.Millisecond
	s := startServer(t, cfg)
	rc := trickleData(t, s)
	lines := rc.wantClosed(5 * time.Second)
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "451 4.4.2") {
		t.Errorf("got %q before the close, want 451 4.4.2", lines)
	}
	s.wantQueued(t, 0)
}

// TestDataTimeoutTotal: DataTimeout bounds the whole transfer even when the
// client keeps sending a little more before each idle timeout.
func TestDataTimeoutTotal(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 10 * time.Second
	cfg.DataIdleTimeout = 2 * time.Second
	cfg.DataTimeout = 600 * time.Millisecond
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	rc.expect("MAIL FROM:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<b@localhost>", "250 ")
	rc.expect("DATA", "354 ")
	start := time.Now()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := rc.c.Write([]byte("x")); err != nil {
				return
			}
		}
	}()
	lines, err := rc.readReply(5 * time.Second)
	close(stop)
	<-done
	if err != nil {
		t.Fatalf("no reply while trickling past DataTimeout: %v", err)
	}
	if got := lines[len(lines)-1]; !strings.HasPrefix(got, "451 4.4.2") {
		t.Fatalf("got %q, want 451 4.4.2", got)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("reply after %v: DataTimeout 600ms not enforced", d)
	}
	s.wantQueued(t, 0)
}

// TestBDATIdleTimeout: a client that stops in the middle of a BDAT chunk is
// treated like one that stops in DATA: a temporary 4xx reply, and the
// connection closes so that the rest of the chunk is never read as
// commands.
func TestBDATIdleTimeout(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 10 * time.Second
	cfg.DataIdleTimeout = 300 * time.Millisecond
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	rc.expect("MAIL FROM:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<b@localhost>", "250 ")
	rc.write("BDAT 100 LAST\r\nSu")
	lines, err := rc.readReply(5 * time.Second)
	if err != nil {
		t.Fatalf("no reply to the stalled BDAT: %v", err)
	}
	s.wantQueued(t, 0)
	got := lines[len(lines)-1]
	if !strings.HasPrefix(got, "451 4.4.2") {
		t.Logf("stalled BDAT got %q", got)
		knownBug(t, "a BDAT chunk is read by go-smtp itself (conn.go handleBdat io.Copy into the pipe), not through relay/smtpd's deadlineReader, so a stalled chunk times out in go-smtp and is answered \"554 5.0.0 Error: transaction failed: read tcp ...: i/o timeout\" (permanent, leaks socket addresses) and the connection stays open, the rest of the chunk then being parsed as commands (go-smtp #196)")
		t.Fatalf("stalled BDAT: got %q, want 451 4.4.2", got)
	}
	if !rc.closed(5 * time.Second) {
		t.Errorf("connection still open after the timeout reply")
	}
}

// TestBDATTimeoutSmuggling: the consequence of the stalled-chunk bug above:
// the rest of the chunk arrives after the timeout and is run as commands.
func TestBDATTimeoutSmuggling(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 10 * time.Second
	cfg.DataIdleTimeout = 300 * time.Millisecond
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	rc.expect("MAIL FROM:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<b@localhost>", "250 ")
	rest := "\r\nNOOP\r\n"
	rc.write("BDAT " + strconv.Itoa(2+len(rest)) + " LAST\r\nSu")
	if _, err := rc.readReply(5 * time.Second); err != nil {
		t.Fatalf("no reply to the stalled BDAT: %v", err)
	}
	rc.c.Write([]byte(rest))
	lines, err := rc.readReply(time.Second)
	if err == nil && len(lines) > 0 && strings.HasPrefix(lines[0], "250") {
		knownBug(t, "after a BDAT chunk times out, go-smtp keeps the connection and relay/smtpd does not close it: the rest of the chunk (here \"NOOP\") is executed as a command")
		t.Fatalf("the rest of a timed-out BDAT chunk was run as a command: %q", lines)
	}
}
