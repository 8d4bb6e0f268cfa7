package relay_test

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/config"
	"github.com/relaymail/relay/relay"
)

// startRelay assembles and runs a whole relay in-process on loopback, with
// cfg edited by edit, until the test ends.
func startRelay(t *testing.T, edit func(*config.Config)) *relay.Server {
	t.Helper()
	cfg := config.Default()
	cfg.Data = filepath.Join(t.TempDir(), "data")
	cfg.SMTP, cfg.Submission, cfg.IMAP, cfg.HTTP = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	edit(&cfg)
	srv, err := relay.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the relay did not stop within 30 s")
		}
	})
	return srv
}

// greeting connects to addr and returns the first line the server sends.
func greeting(t *testing.T, addr net.Addr) (net.Conn, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("greeting from %s: %v", addr, err)
	}
	return c, strings.TrimRight(line, "\r\n")
}

// TestAssembledLimits: the connection limits of the configuration reach the
// listeners of the assembled server: past max-connections-per-ip a client
// is turned away with the limit's reply, on the relay port and on
// submission alike (they share one count), and a freed slot is usable again.
func TestAssembledLimits(t *testing.T) {
	srv := startRelay(t, func(c *config.Config) { c.MaxConnectionsPerIP = 2 })
	smtpAddr, subAddr := srv.Addr("smtp"), srv.Addr("submission")
	c1, g1 := greeting(t, smtpAddr)
	_, g2 := greeting(t, subAddr)
	if !strings.HasPrefix(g1, "220 ") || !strings.HasPrefix(g2, "220 ") {
		t.Fatalf("greetings under the limit: %q, %q", g1, g2)
	}
	_, g3 := greeting(t, smtpAddr)
	if !strings.HasPrefix(g3, "421 4.7.0") || !strings.Contains(g3, "too many connections from your address") {
		t.Errorf("third connection from one address with max-connections-per-ip 2: %q, want 421 4.7.0", g3)
	}
	c1.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, g := greeting(t, smtpAddr)
		if strings.HasPrefix(g, "220 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a freed slot was not given again within 20 s: %q", g)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAssembledMaxConnections: max-connections bounds all clients together.
func TestAssembledMaxConnections(t *testing.T) {
	srv := startRelay(t, func(c *config.Config) { c.MaxConnections, c.MaxConnectionsPerIP = 1, 0 })
	_, g1 := greeting(t, srv.Addr("smtp"))
	_, g2 := greeting(t, srv.Addr("smtp"))
	if !strings.HasPrefix(g1, "220 ") || !strings.HasPrefix(g2, "421 4.7.0") {
		t.Errorf("with max-connections 1: %q, then %q; want 220, then 421 4.7.0", g1, g2)
	}
}
