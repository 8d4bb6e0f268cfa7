// Package tlsconf builds the TLS configuration the SMTP and IMAP listeners
// share: the operator's certificate, or a self-signed one made once in the
// data directory, TLS 1.2 or later, session tickets off.
package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Certs holds the current certificate; Reload swaps it without touching
// connections in flight.
type Certs struct {
	mu                sync.Mutex // guards the file names
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// Load reads certFile and keyFile, or, when both are empty, the self-signed
// pair in dataDir/tls (made on first use for hostname).
func Load(certFile, keyFile, dataDir, hostname string) (*Certs, error) {
	if certFile == "" {
		certFile = filepath.Join(dataDir, "tls", "cert.pem")
		keyFile = filepath.Join(dataDir, "tls", "key.pem")
		if err := selfSigned(certFile, keyFile, hostname); err != nil {
			return nil, err
		}
	}
	c := &Certs{certFile: certFile, keyFile: keyFile}
	return c, c.Reload()
}

// Reload reads the certificate files again.
func (c *Certs) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("tls certificate: %w", err)
	}
	c.cur.Store(&cert)
	return nil
}

// Replace takes over other's files and certificate: listeners holding c's
// Config present the new certificate from their next handshake on.
func (c *Certs) Replace(other *Certs) {
	other.mu.Lock()
	certFile, keyFile := other.certFile, other.keyFile
	other.mu.Unlock()
	c.mu.Lock()
	c.certFile, c.keyFile = certFile, keyFile
	c.cur.Store(other.cur.Load())
	c.mu.Unlock()
}

// Config returns a server configuration that always presents the current
// certificate.
func (c *Certs) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Outlook aborts STARTTLS against Go servers that offer tickets;
		// sessions are short anyway.
		SessionTicketsDisabled: true,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.cur.Load(), nil
		},
	}
}

// selfSigned makes the data directory's certificate when there is none, or
// when the one there does not name hostname (the host name changed): it
// names hostname, localhost, 127.0.0.1 and ::1, the addresses the relay's
// defaults and documentation use, so that clients told to trust it do not
// also warn of a name mismatch.
func selfSigned(certFile, keyFile, hostname string) error {
	if pemBytes, err := os.ReadFile(certFile); err == nil {
		if names(pemBytes, hostname) {
			return nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return fmt.Errorf("tls directory: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostname},
		DNSNames:     slices.Compact([]string{hostname, "localhost"}),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("self-signed certificate: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// names reports whether the PEM certificate is valid for hostname.
func names(pemBytes []byte, hostname string) bool {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return false
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	return err == nil && cert.VerifyHostname(hostname) == nil
}
