package smtpd

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/relaymail/relay/relay/inject"
	"github.com/relaymail/relay/spool"
)

// BareNewline says what ingress does with a bare LF (an LF without a CR
// before it) in message data.
type BareNewline int

const (
	// NormalizeBareLF stores each bare LF as CRLF, for the programs that
	// send their text as it is (Python's smtplib.sendmail with
	// msg.as_bytes(), PHP). DATA still ends only at <CRLF>.<CRLF>, a bare
	// CR is still refused, and a bare LF where it could end the data for a
	// server that reads line ends differently is refused (lineEnds).
	NormalizeBareLF BareNewline = iota
	// RejectBareLF refuses every message with a bare LF (550 5.6.0).
	RejectBareLF
)

// ParseBareNewline reads the bare-newline setting: normalize or reject.
func ParseBareNewline(s string) (BareNewline, error) {
	switch s {
	case "normalize", "":
		return NormalizeBareLF, nil
	case "reject":
		return RejectBareLF, nil
	}
	return 0, fmt.Errorf("bare-newline: %q is not normalize or reject", s)
}

// maxHeaderScan bounds the header section that is held back to add Date:
// and Message-ID: to submitted mail: Postfix's header_size_limit.
const maxHeaderScan = 100 << 10

// message is the chain that checks the client's message data on its way to
// the spool and, for authenticated submission, completes its header.
// chunked is set for BDAT data, which is not dot-stuffed.
func (s *session) message(r io.Reader, chunked bool, m *spool.Message) io.Reader {
	r = &lineEnds{
		r:         &noNUL{r: r},
		normalize: s.srv.cfg.BareNewline == NormalizeBareLF,
		dotted:    !chunked,
	}
	if !m.Params.SMTPUTF8 && m.Params.Body != "8BITMIME" {
		r = &header7bit{r: r}
	}
	if s.user != "" {
		// RFC 6409 §8.2, §8.3: a submission server may add the Date: and
		// Message-ID: its clients left out, as Postfix does for its own
		// clients. Mail on the relay port is left as it came.
		r = inject.Complete(r, inject.Stamp{Date: m.Arrived, MessageID: m.ID + "@" + s.srv.cfg.Hostname}, maxHeaderScan)
	}
	return r
}

// chunkedData reports whether go-smtp hands Data the data of BDAT: it pipes
// the chunks through an io.Pipe, and DATA through its dot-decoding reader.
func chunkedData(r io.Reader) bool {
	_, ok := r.(*io.PipeReader)
	return ok
}

var (
	errNUL      = errors.New("NUL octet in message data")
	errBareLine = errors.New("bare LF or CR in message data")
	errDotLine  = errors.New("bare LF where it could end the data")
)

// noNUL fails with errNUL at the first NUL octet: RFC 5322 §2.2 and §3.5 do
// not allow NUL anywhere in a message, and RFC 5321 §4.1.1.4 leaves no
// place for it in DATA (the relay offers no BINARYMIME).
type noNUL struct{ r io.Reader }

func (n *noNUL) Read(p []byte) (int, error) {
	k, err := n.r.Read(p)
	if bytes.IndexByte(p[:k], 0) >= 0 {
		return 0, errNUL
	}
	return k, err
}

// lineEnds checks the line ends of message data. RFC 5321 §2.3.8: lines end
// in CRLF only, and a server that takes a bare LF or CR for a line end where
// another does not lets a client smuggle a second message past both (SMTP
// smuggling). A bare CR always fails with errBareLine. A bare LF fails with
// errBareLine too, unless normalize is set, in which case it is passed on as
// CRLF; it then still fails with errDotLine where it could end the data:
// next to a line of a single dot (<LF>.<LF>, <LF>.<CR><LF>, <CR><LF>.<LF>),
// and, in DATA, at an empty line after a CRLF, because go-smtp's reader
// drops the dot of <CR><LF>.<LF> and leaves just that.
//
// In DATA (dotted), go-smtp removes the transparency dot (RFC 5321 §4.5.2)
// only from lines that begin after a CRLF; with normalize, lineEnds removes
// it from the lines that begin after a bare LF, as the client meant them.
type lineEnds struct {
	r         io.Reader
	normalize bool
	dotted    bool

	buf, out []byte
	err      error

	cr      bool // the last octet was a CR, not passed on yet
	afterLF bool // the current line began after a bare LF
	n       int  // octets of the current line so far, as the client sent them
	dot     bool // the current line so far is a single dot, as sent
	held    bool // the line's first dot, held back as a transparency dot
}

func (l *lineEnds) Read(p []byte) (int, error) {
	for len(l.out) == 0 {
		if l.err != nil {
			return 0, l.err
		}
		if l.buf == nil {
			l.buf = make([]byte, maxRead)
		}
		k, err := l.r.Read(l.buf[:min(len(l.buf), max(len(p)/2, 1))])
		l.out = l.out[:0]
		for _, b := range l.buf[:k] {
			if l.err = l.step(b); l.err != nil {
				l.out = l.out[:0]
				return 0, l.err
			}
		}
		if err == io.EOF {
			err = l.end()
		}
		l.err = err
	}
	n := copy(p, l.out)
	l.out = l.out[n:]
	return n, nil
}

// step takes one octet of the client's data.
func (l *lineEnds) step(b byte) error {
	if l.cr {
		l.cr = false
		if b != '\n' {
			return errBareLine
		}
		if l.dot && l.afterLF {
			return errDotLine
		}
		l.out = append(l.out, '\r', '\n')
		l.newLine(false)
		return nil
	}
	switch b {
	case '\r':
		l.cr = true
		return nil
	case '\n':
		switch {
		case !l.normalize:
			return errBareLine
		case l.dot, l.dotted && l.n == 0 && !l.afterLF:
			return errDotLine
		}
		l.out = append(l.out, '\r', '\n')
		l.newLine(true)
		return nil
	}
	if l.held {
		l.held = false // the transparency dot goes
	} else if l.dotted && l.afterLF && l.n == 0 && b == '.' {
		l.held, l.dot, l.n = true, true, 1
		return nil
	}
	l.dot = l.n == 0 && b == '.'
	l.n++
	l.out = append(l.out, b)
	return nil
}

func (l *lineEnds) newLine(afterLF bool) {
	l.afterLF, l.n, l.dot, l.held = afterLF, 0, false, false
}

// end checks the end of the data: a CR there is bare.
func (l *lineEnds) end() error {
	if l.cr {
		return errBareLine
	}
	if l.held {
		l.out = append(l.out, '.')
		l.held = false
	}
	return io.EOF
}
