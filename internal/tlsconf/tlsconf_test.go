package tlsconf_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/tlsconf"
)

// serve accepts TLS connections with cfg on loopback and completes each
// handshake, until the test ends.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if c.(*tls.Conn).Handshake() == nil {
					// TLS 1.3 sends its tickets after the handshake;
					// a read gives them time to go out.
					c.Read(make([]byte, 1))
				}
			}()
		}
	}()
	return l.Addr().String()
}

// selfSigned loads certificates made for mx.test in a fresh directory.
func selfSigned(t *testing.T) *tlsconf.Certs {
	t.Helper()
	certs, err := tlsconf.Load("", "", t.TempDir(), "mx.test")
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// TestSelfSignedKept: without a certificate the first Load makes one in the
// data directory, and the next Load uses the same.
func TestSelfSignedKept(t *testing.T) {
	dir := t.TempDir()
	a, err := tlsconf.Load("", "", dir, "mx.test")
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) == 0 {
		t.Fatalf("no certificate written to %s", dir)
	}
	b, err := tlsconf.Load("", "", dir, "mx.test")
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := a.Config().GetCertificate(&tls.ClientHelloInfo{})
	cb, _ := b.Config().GetCertificate(&tls.ClientHelloInfo{})
	if ca == nil || cb == nil || string(ca.Certificate[0]) != string(cb.Certificate[0]) {
		t.Errorf("second Load made a new certificate")
	}
}

// TestNoSessionTickets: a client that keeps sessions never resumes one
// (Outlook aborts STARTTLS with Go servers that issue tickets), under TLS 1.2
// and 1.3.
func TestNoSessionTickets(t *testing.T) {
	addr := serve(t, selfSigned(t).Config())
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		cache := tls.NewLRUClientSessionCache(4)
		for i := range 2 {
			c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ClientSessionCache: cache, MinVersion: v, MaxVersion: v})
			if err != nil {
				t.Fatalf("version %x, dial %d: %v", v, i, err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("x")) // lets the server's read return
			c.Read(make([]byte, 1))
			if c.ConnectionState().DidResume {
				t.Errorf("version %x: connection %d resumed a session", v, i)
			}
			c.Close()
		}
	}
}

// TestOldVersionsRefused: TLS 1.0 and 1.1 do not get a handshake.
func TestOldVersionsRefused(t *testing.T) {
	addr := serve(t, selfSigned(t).Config())
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
			&tls.Config{InsecureSkipVerify: true, MinVersion: v, MaxVersion: v})
		if err == nil {
			c.Close()
			t.Errorf("version %x: handshake succeeded", v)
		}
	}
}

// TestSelfSignedNames: the self-signed certificate verifies for the host
// name, localhost, 127.0.0.1 and ::1, so that a client that trusts it does
// not warn of a mismatch on the documented addresses; a changed host name
// gets a new certificate.
func TestSelfSignedNames(t *testing.T) {
	dir := t.TempDir()
	certs, err := tlsconf.Load("", "", dir, "mx.test")
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, certs.Config())
	cert, err := tls.LoadX509KeyPair(dir+"/tls/cert.pem", dir+"/tls/key.pem")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool.AddCert(leaf)
	for _, name := range []string{"mx.test", "localhost", "127.0.0.1", "::1"} {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: name})
		if err != nil {
			t.Errorf("TLS to the self-signed certificate as %q: %v", name, err)
			continue
		}
		c.Close()
	}
	if _, err := tlsconf.Load("", "", dir, "mail.example.org"); err != nil {
		t.Fatal(err)
	}
	again, err := tls.LoadX509KeyPair(dir+"/tls/cert.pem", dir+"/tls/key.pem")
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ = x509.ParseCertificate(again.Certificate[0])
	if err := leaf.VerifyHostname("mail.example.org"); err != nil {
		t.Errorf("after a host name change the certificate still does not name it: %v", err)
	}
}
