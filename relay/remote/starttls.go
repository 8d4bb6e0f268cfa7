package remote

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
)

// errTLSBroken means a STARTTLS handshake failed: the connection is gone and
// the caller tries again in plain text.
var errTLSBroken = errors.New("STARTTLS handshake failed")

// openTLS reads the greeting, says EHLO with our name and, if the server
// offers STARTTLS, starts TLS, all before go-smtp's client takes the
// connection: go-smtp's NewClientStartTLS sends the EHLO before STARTTLS as
// "localhost" and has no way to name us there (RFC 5321 §4.1.1.1 wants our
// name in every EHLO). It returns the connection for go-smtp, which replays
// the greeting, so that go-smtp's own greeting and EHLO handling runs as on
// a fresh connection, and whether it is under TLS.
//
// Without STARTTLS, or when the server refuses the command, the session
// goes on in plain text on the same connection and go-smtp's EHLO is the
// second one, which RFC 5321 §4.1.4 allows. A failed handshake leaves
// nothing usable: errTLSBroken.
func openTLS(ctx context.Context, conn net.Conn, hostname string, cfg *tls.Config) (net.Conn, bool, error) {
	br := bufio.NewReader(conn)
	greeting, code, err := readReply(br)
	if err != nil {
		return nil, false, fmt.Errorf("greeting: %w", err)
	}
	plain := func() (net.Conn, bool, error) {
		return &replayConn{Conn: conn, r: io.MultiReader(bytes.NewReader(greeting), br)}, false, nil
	}
	if code != 220 {
		return plain() // go-smtp reports the refusal
	}
	if _, err := io.WriteString(conn, "EHLO "+hostname+"\r\n"); err != nil {
		return nil, false, fmt.Errorf("EHLO: %w", err)
	}
	ehlo, code, err := readReply(br)
	if err != nil {
		return nil, false, fmt.Errorf("EHLO: %w", err)
	}
	if code != 250 || !offersSTARTTLS(ehlo) {
		return plain()
	}
	if _, err := io.WriteString(conn, "STARTTLS\r\n"); err != nil {
		return nil, false, fmt.Errorf("STARTTLS: %w", err)
	}
	if _, code, err = readReply(br); err != nil {
		return nil, false, fmt.Errorf("STARTTLS: %w", err)
	}
	if code != 220 {
		return plain()
	}
	if br.Buffered() > 0 {
		// Whatever the server sent after its 220 would be read as if it
		// came under TLS (the client side of CVE-2011-0411).
		conn.Close()
		return nil, false, fmt.Errorf("%w: data after the 220 to STARTTLS", errTLSBroken)
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		tc.Close()
		return nil, false, fmt.Errorf("%w: %w", errTLSBroken, err)
	}
	return &replayConn{Conn: tc, r: io.MultiReader(bytes.NewReader(greeting), tc)}, true, nil
}

// maxReply bounds one reply read by openTLS; an EHLO reply is a few hundred
// bytes.
const maxReply = 64 << 10

// readReply reads one reply, every line of it, and returns its bytes and
// code.
func readReply(br *bufio.Reader) ([]byte, int, error) {
	var all []byte
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return nil, 0, err
		}
		all = append(all, line...)
		if len(all) > maxReply {
			return nil, 0, errors.New("reply too long")
		}
		if len(line) < 4 || !isDigits(line[:3]) || line[3] != ' ' && line[3] != '-' && line[3] != '\r' {
			return nil, 0, fmt.Errorf("malformed reply line %q", strings.TrimRight(string(line), "\r\n"))
		}
		if line[3] != '-' {
			code := int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
			return all, code, nil
		}
	}
}

func isDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// offersSTARTTLS reports whether an EHLO reply lists STARTTLS.
func offersSTARTTLS(reply []byte) bool {
	for line := range strings.SplitSeq(string(reply), "\n") {
		if len(line) > 4 && strings.EqualFold(strings.TrimSpace(line[4:]), "STARTTLS") {
			return true
		}
	}
	return false
}

// replayConn hands go-smtp a connection whose first bytes are the greeting
// openTLS already read.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }
