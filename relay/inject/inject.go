// Package inject prepares a message handed to `relay sendmail` for the queue,
// as a local MTA's pickup does: canonical CRLF line ends, sendmail's lone-dot
// end of input, recipients taken from the header with -t (and Bcc removed),
// and the header fields a program often leaves out (From, Date, Message-ID)
// added, per RFC 5322 §3.6 and RFC 6409 §8.
package inject

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// CRLF returns a reader that ends every line of r with CRLF, whatever it
// ended with (LF, CRLF); a lone CR inside a line is kept out, so that nothing
// stored can be read as a line end by one program and not by another.
func CRLF(r io.Reader) io.Reader { return &crlf{r: bufio.NewReader(r)} }

type crlf struct {
	r       *bufio.Reader
	pending []byte
	err     error
}

func (c *crlf) Read(p []byte) (int, error) {
	for len(c.pending) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		line, err := c.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			err = nil // a long line: pass it on in pieces
		} else if err != nil {
			c.err = err
		}
		nl := len(line) > 0 && line[len(line)-1] == '\n'
		if nl {
			line = line[:len(line)-1]
		}
		c.pending = append(c.pending[:0], strings.ReplaceAll(string(line), "\r", "")...)
		if nl || (c.err == io.EOF && len(c.pending) > 0) {
			c.pending = append(c.pending, '\r', '\n')
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// UntilDot returns a reader that ends at a line holding a single "." (or
// ".\r"), as sendmail reads its input unless given -i or -oi.
func UntilDot(r io.Reader) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		br := bufio.NewReader(r)
		for {
			line, err := br.ReadString('\n')
			if t := strings.TrimRight(line, "\r\n"); t == "." && line != "." {
				pw.Close()
				return
			}
			if _, werr := io.WriteString(pw, line); werr != nil {
				return
			}
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				pw.CloseWithError(err)
				return
			}
		}
	}()
	return pr
}

// Options say how to complete a message.
type Options struct {
	// From is the envelope sender; it also fills a missing From: field.
	From string
	// FullName (-F) is the sender's name in a From: field made here.
	FullName string
	// Extract (-t) takes the recipients from To, Cc and Bcc.
	Extract bool
	// Hostname is the right side of a Message-ID made here.
	Hostname string
	// MessageID is the left side of a Message-ID made here (the queue ID).
	MessageID string
	// Now is the Date: of a message that has none.
	Now time.Time
}

// ErrNoRecipients is returned by Prepare when -t finds no recipients and
// none were given.
var ErrNoRecipients = errors.New("no recipients: give them as arguments, or use -t with To, Cc or Bcc in the message")

// Prepare reads the header of msg, completes it, and returns it (CRLF
// ended, with the blank line) and the recipients from its fields when
// o.Extract is set. The body is what is left to read in msg.
func Prepare(msg *bufio.Reader, o Options) (header []byte, rcpts []string, err error) {
	var h textproto.Header
	if startsWithHeader(msg) {
		if h, err = textproto.ReadHeader(msg); err != nil {
			return nil, nil, fmt.Errorf("message header: %w", err)
		}
	}
	mh := mail.Header{Header: message.Header{Header: h}}
	if o.Extract {
		for _, k := range []string{"To", "Cc", "Bcc"} {
			list, err := addressList(mh, k)
			if err != nil {
				return nil, nil, fmt.Errorf("message header %s: %w", k, err)
			}
			rcpts = append(rcpts, list...)
		}
		// RFC 5322 §3.6.3: Bcc recipients are not shown to the others.
		mh.Del("Bcc")
	}
	if !mh.Has("From") && o.From != "" {
		mh.SetAddressList("From", []*mail.Address{{Name: o.FullName, Address: o.From}})
	}
	var b bytes.Buffer
	if err := textproto.WriteHeader(&b, mh.Header.Header); err != nil {
		return nil, nil, err
	}
	// The header is in memory already, so the scan needs no bound of its
	// own.
	st := Stamp{Date: o.Now, MessageID: o.MessageID + "@" + o.Hostname}
	header, err = io.ReadAll(Complete(&b, st, b.Len()+1))
	if err != nil {
		return nil, nil, err
	}
	return header, rcpts, nil
}

// addressList returns the addresses of the header field k. A bare name
// without a domain ("To: bob@localhost, carol") is returned as it is, for
// the caller to take as a local user, as sendmail takes one on the command
// line; RFC 5322 has no such address, so the field is read item by item
// when it does not parse as a whole.
func addressList(h mail.Header, k string) ([]string, error) {
	list, err := h.AddressList(k)
	if err == nil {
		out := make([]string, len(list))
		for i, a := range list {
			out[i] = a.Address
		}
		return out, nil
	}
	var out []string
	for _, v := range h.Values(k) {
		for _, item := range splitList(v) {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			if a, perr := mail.ParseAddress(item); perr == nil {
				out = append(out, a.Address)
				continue
			}
			name, ok := bareName(item)
			if !ok {
				return nil, err
			}
			out = append(out, name)
		}
	}
	return out, nil
}

// splitList cuts an address list at the commas that separate its items,
// not those inside quoted strings, comments or angle brackets.
func splitList(v string) []string {
	var items []string
	depth, quoted, angle, start := 0, false, false, 0
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\\' && (quoted || depth > 0):
			i++
		case c == '"' && depth == 0:
			quoted = !quoted
		case quoted:
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case depth > 0:
		case c == '<':
			angle = true
		case c == '>':
			angle = false
		case c == ',' && !angle:
			items = append(items, v[start:i])
			start = i + 1
		}
	}
	return append(items, v[start:])
}

// bareName returns the local name of an item that is one without a domain,
// alone or in angle brackets after a display name ("carol", "Carol
// <carol>"): a dot-atom of RFC 5322 §3.2.3, UTF-8 allowed (RFC 6532).
func bareName(item string) (string, bool) {
	if i := strings.LastIndexByte(item, '<'); i >= 0 && strings.HasSuffix(item, ">") {
		item = item[i+1 : len(item)-1]
	}
	if item == "" || strings.HasPrefix(item, ".") || strings.HasSuffix(item, ".") || strings.Contains(item, "..") {
		return "", false
	}
	for _, r := range item {
		if r < 0x80 && !strings.ContainsRune(atext, r) && r != '.' {
			return "", false
		}
	}
	return item, true
}

// atext is RFC 5322 §3.2.3 atext.
const atext = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"

// startsWithHeader reports whether msg opens with a header field. Input
// without one (`echo hello | relay sendmail bob`) is all body, as sendmail
// and Postfix take it.
func startsWithHeader(msg *bufio.Reader) bool {
	first, _ := msg.Peek(1000)
	line, _, _ := strings.Cut(string(first), "\n")
	name, _, ok := strings.Cut(line, ":")
	if !ok || name == "" {
		return false
	}
	for _, r := range name {
		// RFC 5322 §3.6.8: printable ASCII except colon and space.
		if r <= ' ' || r > '~' {
			return false
		}
	}
	return true
}
