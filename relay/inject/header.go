package inject

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"time"
)

// Stamp is what a submitted message gets when its header lacks it: the
// Date: and Message-ID: fields that RFC 5322 §3.6 asks of every message and
// RFC 6409 §8.2 and §8.3 let a submission server add.
type Stamp struct {
	// Date is the Date: of a message that has none.
	Date time.Time
	// MessageID is the Message-ID: of a message that has none, without
	// the angle brackets: QUEUEID@HOSTNAME.
	MessageID string
}

// dateLayout is RFC 5322 §3.3 date-time.
const dateLayout = "Mon, 02 Jan 2006 15:04:05 -0700"

// fields returns the header lines (CRLF ended) of the fields of st that has
// reports absent; has is asked with the field names in lower case.
func (st Stamp) fields(has func(lowerName string) bool) []byte {
	var b []byte
	if !has("date") {
		b = append(b, "Date: "+st.Date.Format(dateLayout)+"\r\n"...)
	}
	if !has("message-id") {
		b = append(b, "Message-ID: <"+st.MessageID+">\r\n"...)
	}
	return b
}

// Complete returns msg with the fields of st that its header section lacks
// added at the end of that section, ahead of the blank line; a message that
// opens with no header field at all gets them as its header. The header
// section is held back while it is scanned, up to limit octets: a longer one
// is passed on unchanged rather than held without bound, and so is one whose
// last line has no line end. Errors of msg are passed on.
func Complete(msg io.Reader, st Stamp, limit int) io.Reader {
	return &completer{src: msg, st: st, limit: limit}
}

type completer struct {
	src   io.Reader
	st    Stamp
	limit int
	r     io.Reader // set by the first Read: the completed message
}

func (c *completer) Read(p []byte) (int, error) {
	if c.r == nil {
		c.r = c.scan()
	}
	return c.r.Read(p)
}

// scan reads the header section and returns the reader of the whole
// message, completed.
func (c *completer) scan() io.Reader {
	br := bufio.NewReader(c.src)
	var hdr []byte
	present := map[string]bool{}
	has := func(name string) bool { return present[name] }
	for {
		line, err := readLine(br, c.limit-len(hdr))
		start := len(hdr)
		hdr = append(hdr, line...)
		switch {
		case errors.Is(err, errLong):
			return io.MultiReader(bytes.NewReader(hdr), br)
		case err == io.EOF && len(line) == 0:
			// The message ends in its header section (or is empty).
			hdr = append(hdr, c.st.fields(has)...)
			return bytes.NewReader(hdr)
		case err == io.EOF:
			// A last line without a line end: left as it is.
			return bytes.NewReader(hdr)
		case err != nil:
			return io.MultiReader(bytes.NewReader(hdr), &errReader{err})
		}
		if start > 0 && (line[0] == ' ' || line[0] == '\t') {
			continue // RFC 5322 §2.2.3: a folded line of the field above
		}
		if name, ok := fieldName(line); ok {
			present[strings.ToLower(name)] = true
			continue
		}
		// The blank line, or a line that is no header field, ends the
		// header section; the latter starts the body, which then needs
		// a blank line of its own before it.
		add := c.st.fields(has)
		if !isBlank(line) {
			add = append(add, '\r', '\n')
		}
		out := append(hdr[:start:start], add...)
		out = append(out, line...)
		return io.MultiReader(bytes.NewReader(out), br)
	}
}

var errLong = errors.New("header section too long to scan")

// readLine reads one line with its line end, failing with errLong past max
// octets.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		part, err := br.ReadSlice('\n')
		line = append(line, part...)
		if len(line) > max {
			return line, errLong
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return line, err
		}
	}
}

// fieldName returns the name of a header field line: RFC 5322 §3.6.8
// printable ASCII but colon, with the white space before the colon that
// §4.5.3 (obsolete syntax) allows.
func fieldName(line []byte) (string, bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return "", false
	}
	name := strings.TrimRight(string(line[:i]), " \t")
	if name == "" {
		return "", false
	}
	for j := 0; j < len(name); j++ {
		if name[j] <= ' ' || name[j] > '~' {
			return "", false
		}
	}
	return name, true
}

func isBlank(line []byte) bool {
	return string(line) == "\r\n" || string(line) == "\n"
}

// errReader fails every Read with err.
type errReader struct{ err error }

func (e *errReader) Read([]byte) (int, error) { return 0, e.err }
