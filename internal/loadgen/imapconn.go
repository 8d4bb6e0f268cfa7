package loadgen

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// LoginIMAP connects to addr without TLS (loopback only) and logs in.
func LoginIMAP(addr, user, pass string) (*imapclient.Client, error) {
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		return nil, fmt.Errorf("imap connect %s: %w", addr, err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("imap login %s as %s: %w", addr, user, err)
	}
	return c, nil
}

// imapErrorKey names err for the error counts: the status (NO, BAD) the
// server answered, or "network".
func imapErrorKey(err error) string {
	var ie *imap.Error
	if errors.As(err, &ie) {
		return string(ie.Type)
	}
	return "network"
}

// isClosed reports whether c's connection is gone.
func isClosed(c *imapclient.Client) bool {
	select {
	case <-c.Closed():
		return true
	default:
		return false
	}
}

func errorsIsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
