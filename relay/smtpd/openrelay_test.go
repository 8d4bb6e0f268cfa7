package smtpd_test

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

// TestNeverAnOpenRelay tries the classic relay tricks on the unauthenticated
// port. Each must be refused, or accepted only as mail for a local domain:
// nothing may be queued for another domain.
func TestNeverAnOpenRelay(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, rcpt string
		local      bool // accepted as local mail (RFC 5321 allows it)
	}{
		{"plain remote", "<v@remote.example>", false},
		{"percent hack", "<v%remote.example@localhost>", true},
		{"bang path", "<remote.example!v@localhost>", true},
		{"bang path without domain", "<remote.example!v>", false},
		{"source route", "<@localhost:v@remote.example>", false},
		{"source route two hops", "<@localhost,@relay.test:v@remote.example>", false},
		{"quoted local part", `<"v@remote.example"@localhost>`, true},
		{"double at, local last", "<v@remote.example@localhost>", true},
		{"double at, remote last", "<v@localhost@remote.example>", false},
		{"trailing dot remote", "<v@remote.example.>", false},
		{"trailing dot local", "<v@localhost.>", false},
		{"IPv4 literal", "<v@[192.0.2.1]>", false},
		{"IPv4 literal loopback", "<v@[127.0.0.1]>", false},
		{"IPv6 literal", "<v@[IPv6:2001:db8::1]>", false},
		{"case variant local", "<v@LocalHost>", true},
		{"case variant remote", "<v@REMOTE.example>", false},
		{"local as subdomain", "<v@localhost.remote.example>", false},
		{"remote as subdomain", "<v@remote.example.localhost>", false},
		{"no brackets", "v@remote.example", false},
		{"space before domain", "<v@ remote.example>", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, testConfig())
			conn, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(conn)
			reply := func(cmd string) string {
				t.Helper()
				if cmd != "" {
					if _, err := conn.Write([]byte(cmd + "\r\n")); err != nil {
						t.Fatal(err)
					}
				}
				var last string
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						t.Fatalf("after %q: %v", cmd, err)
					}
					last = line
					if len(line) < 4 || line[3] != '-' {
						return strings.TrimSpace(last)
					}
				}
			}
			reply("")
			reply("EHLO client.test")
			if got := reply("MAIL FROM:<spammer@remote.example>"); !strings.HasPrefix(got, "250") {
				t.Fatalf("MAIL: %s", got)
			}
			got := reply("RCPT TO:" + tc.rcpt)
			switch {
			case strings.HasPrefix(got, "250") && !tc.local:
				t.Fatalf("RCPT TO:%s accepted: %s", tc.rcpt, got)
			case strings.HasPrefix(got, "250"):
				reply("DATA")
				if got := reply("Subject: relay test\r\n\r\nhi\r\n."); !strings.HasPrefix(got, "250") {
					t.Fatalf("DATA: %s", got)
				}
				for _, m := range s.wantQueued(t, 1) {
					for _, rc := range m.Rcpts {
						if d := rc.Address[strings.LastIndexByte(rc.Address, '@')+1:]; d != "localhost" {
							t.Fatalf("queued for %q (domain %q): relayed", rc.Address, d)
						}
					}
				}
			case got[0] != '5':
				t.Fatalf("RCPT TO:%s: %s, want a permanent refusal or local acceptance", tc.rcpt, got)
			default:
				s.wantQueued(t, 0)
			}
		})
	}
}
