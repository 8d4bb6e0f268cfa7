package main

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listenerAddr waits for the "listening" log line of the named listener
// and returns its address.
func listenerAddr(t *testing.T, srv *server, name string) string {
	t.Helper()
	var addr string
	found := waitFor(30*time.Second, func() bool {
		for _, line := range strings.Split(srv.logText(), "\n") {
			if m := listenLine.FindStringSubmatch(line); m != nil && m[1] == name {
				addr = m[2]
				return true
			}
		}
		return false
	})
	if !found {
		t.Fatalf("relay serve did not log its %s address within 30s:\n%s", name, srv.logText())
	}
	return addr
}

// max-connections-per-ip caps IMAP and IMAPS together, apart from SMTP:
// past it the greeting is BYE [UNAVAILABLE] and the connection closes,
// while SMTP from the same address is still served.
func TestIMAPConnectionLimit(t *testing.T) {
	t.Parallel()
	data := filepath.Join(workDir(t), "data")
	srv := startServer(t, data, "--imap", "127.0.0.1:0", "--imaps", "127.0.0.1:0", "--max-connections-per-ip", "2")
	imapAddr, imapsAddr := listenerAddr(t, srv, "imap"), listenerAddr(t, srv, "imaps")
	dial := func(name string) (net.Conn, *bufio.Reader) {
		t.Helper()
		var c net.Conn
		var err error
		if name == "imaps" {
			// The relay's self-signed certificate: trust is not the point.
			c, err = tls.Dial("tcp", imapsAddr, &tls.Config{InsecureSkipVerify: true})
		} else {
			c, err = net.Dial("tcp", imapAddr)
		}
		if err != nil {
			t.Fatalf("dial %s: %v", name, err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(30 * time.Second))
		return c, bufio.NewReader(c)
	}
	greeting := func(name string) string {
		t.Helper()
		_, r := dial(name)
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("%s greeting: %v", name, err)
		}
		return line
	}
	for _, name := range []string{"imap", "imaps"} {
		if g := greeting(name); !strings.HasPrefix(g, "* OK") {
			t.Fatalf("%s connection within the limit: %q", name, g)
		}
	}
	for _, name := range []string{"imap", "imaps"} {
		_, r := dial(name)
		got, err := io.ReadAll(r)
		if want := "* BYE [UNAVAILABLE] too many connections from your address, try again later\r\n"; string(got) != want || err != nil {
			t.Errorf("%s connection past the limit: %q %v, want %q and close", name, got, err, want)
		}
	}
	c := srv.dial(t)
	if err := c.Noop(); err != nil {
		t.Errorf("SMTP with IMAP at its limit: %v", err)
	}
}
