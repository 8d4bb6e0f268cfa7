package imapd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// The ID command (RFC 2971) is answered by the guard: imapserver does not
// know it and, before login, answers an unknown command with BAD and ends
// the session, while Thunderbird, iOS Mail and imapflow send ID first. The
// answer names the server and its version, nothing about the host or the
// account.

// Limits of RFC 2971 §3.3 on what a client sends: field names up to 30
// octets, values up to 1024, at most 30 pairs.
const (
	idMaxField = 30
	idMaxValue = 1024
	idMaxPairs = 30
)

// imapserver's read timeouts for the next command: before login, and after
// it (RFC 9051 §5.4: at least 30 minutes). The guard restores them after a
// command it answered itself, which imapserver never saw.
const (
	cmdReadTimeout  = 30 * time.Second
	idleReadTimeout = 35 * time.Minute
)

// moduleVersion is the relay's module version as the go command recorded
// it in the binary ("(devel)" when it was not built from a module version).
func moduleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// idResponse is the untagged ID response for the given server version.
func idResponse(version string) string {
	return `* ID ("name" "relay" "version" ` + quoteText(version) + ")\r\n"
}

// quoteText makes s an IMAP quoted string (RFC 9051 §9), dropping the
// characters a quoted string cannot hold.
func quoteText(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || r > 0x7e {
			return -1
		}
		return r
	}, s)
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// isID reports whether line, a complete first line of a command, is ID.
func isID(line []byte) bool {
	tag, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || !validTag(tag) || len(rest) < 2 || !bytes.EqualFold(rest[:2], []byte("ID")) {
		return false
	}
	rest = rest[2:]
	return len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\r' || rest[0] == '\n')
}

// errIDSyntax is a client's ID command the guard cannot parse.
type errIDSyntax string

func (e errIDSyntax) Error() string { return string(e) }

// answerID reads the ID command whose first line is buffered, without
// handing any of it to imapserver, and answers it. A command that does not
// parse gets BAD and the rest of it is skipped as a refused command's is.
func (g *guardConn) answerID(tag string) error {
	p := &idParser{g: g}
	pairs, err := p.command()
	var syn errIDSyntax
	switch {
	case errors.As(err, &syn):
		return g.refuseID(tag, p, string(syn))
	case err != nil:
		return err
	}
	g.srv.cfg.Log.Debug("imap client id", "client", g.ip, "id", safeText(strings.Join(pairs, " ")))
	if err := g.answer(idResponse(g.srv.cfg.Version)+tag+" OK ID completed\r\n", "OK"); err != nil {
		return err
	}
	g.restoreReadTimeout()
	return nil
}

// refuseID answers a malformed ID with BAD and leaves the guard skipping
// what is left of the command: the rest of its line and any
// non-synchronizing literal announced at its end.
func (g *guardConn) refuseID(tag string, p *idParser, why string) error {
	in := &g.in
	if p.litLeft > 0 {
		if p.litLeft > maxSkip {
			return g.violate("refused literal too long")
		}
		in.litLeft, in.litNonSync, in.skipping = p.litLeft, true, true
	} else if !p.atLineEnd {
		in.skipping = true
	}
	in.tail, in.cr = in.tail[:0], false
	if err := g.answer(tag+" BAD [CLIENTBUG] ID: "+why+"\r\n", "BAD"); err != nil {
		return err
	}
	g.restoreReadTimeout()
	return nil
}

// restoreReadTimeout gives the client the time imapserver gives it for
// its next command.
func (g *guardConn) restoreReadTimeout() {
	d := cmdReadTimeout
	if g.authenticated.Load() {
		d = idleReadTimeout
	}
	g.Conn.SetReadDeadline(time.Now().Add(d))
}

// answer writes the guard's own reply to a command imapserver never saw
// and counts its status as imapserver's replies are counted. imapserver is
// waiting for a command then, so it writes nothing meanwhile.
func (g *guardConn) answer(lines, status string) error {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	g.Conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err := io.WriteString(g.Conn, lines)
	g.Conn.SetWriteDeadline(time.Time{})
	if err != nil {
		return err
	}
	return g.count(status)
}

// idParser reads an ID command (RFC 2971 §4) straight from the guard's
// buffer: "tag ID" SP ("(" [string SP nstring *(SP string SP nstring)] ")"
// / "NIL") CRLF, where a string may be a literal.
type idParser struct {
	g    *guardConn
	read int // bytes of the command, against maxCommandText
	// atLineEnd: the last byte read was the LF ending a line.
	atLineEnd bool
	// litLeft is a non-synchronizing literal announced and refused,
	// whose bytes the client sends anyway.
	litLeft int64
}

func (p *idParser) next() (byte, error) {
	if p.read >= maxCommandText {
		return 0, errIDSyntax("command too long")
	}
	c, err := p.g.br.ReadByte()
	if err != nil {
		return 0, err
	}
	p.read++
	if c == '\r' {
		// The line is buffered to its LF, or the client sends the
		// rest of it after a literal.
		if next, err := p.g.br.Peek(1); err == nil && next[0] == '\n' {
			p.g.br.Discard(1)
			p.read++
			c = '\n'
		}
	}
	p.atLineEnd = c == '\n'
	if c == '\n' {
		return 0, errIDSyntax("unexpected end of line")
	}
	return c, nil
}

// expect reads want, in any case, or fails with "expected want".
func (p *idParser) expect(want string) error {
	return p.expectOr(want, fmt.Sprintf("expected %q", want))
}

func (p *idParser) expectOr(want, why string) error {
	for i := range len(want) {
		c, err := p.next()
		if err != nil {
			return err
		}
		if c|0x20 != want[i]|0x20 {
			return errIDSyntax(why)
		}
	}
	return nil
}

// command reads the whole command and returns its field-value pairs as
// "field=value" strings.
func (p *idParser) command() ([]string, error) {
	tag, err := p.g.br.ReadSlice(' ')
	if err != nil {
		return nil, err
	}
	p.read += len(tag)
	if err := p.expect("ID "); err != nil {
		return nil, err
	}
	c, err := p.next()
	if err != nil {
		return nil, err
	}
	var pairs []string
	switch c {
	case 'N', 'n':
		if err := p.expectOr("IL", "expected a list or NIL"); err != nil {
			return nil, err
		}
	case '(':
		if pairs, err = p.list(); err != nil {
			return nil, err
		}
	default:
		return nil, errIDSyntax("expected a list or NIL")
	}
	return pairs, p.lineEnd()
}

// list reads the field-value pairs after "(" through ")".
func (p *idParser) list() ([]string, error) {
	var pairs []string
	for {
		c, err := p.next()
		if err != nil {
			return nil, err
		}
		if c == ')' && len(pairs) == 0 {
			return pairs, nil
		}
		if len(pairs) > 0 {
			if c == ')' {
				return pairs, nil
			}
			if c != ' ' {
				return nil, errIDSyntax("expected a space or )")
			}
			if c, err = p.next(); err != nil {
				return nil, err
			}
		}
		if len(pairs) == idMaxPairs {
			return nil, errIDSyntax("more than 30 field-value pairs")
		}
		field, isNil, err := p.str(c, idMaxField)
		if err != nil {
			return nil, err
		}
		if isNil {
			return nil, errIDSyntax("a field name is a string, not NIL")
		}
		if err := p.expect(" "); err != nil {
			return nil, err
		}
		if c, err = p.next(); err != nil {
			return nil, err
		}
		value, _, err := p.str(c, idMaxValue)
		if err != nil {
			return nil, err
		}
		pairs = append(pairs, field+"="+value)
	}
}

// str reads a quoted string, literal or NIL starting with c.
func (p *idParser) str(c byte, max int) (s string, isNil bool, err error) {
	switch c {
	case '"':
		return p.quoted(max)
	case '{':
		return p.literal(max)
	case 'N', 'n':
		return "", true, p.expect("IL")
	}
	return "", false, errIDSyntax("expected a string")
}

func (p *idParser) quoted(max int) (string, bool, error) {
	var b []byte
	for {
		c, err := p.next()
		if err != nil {
			return "", false, err
		}
		switch c {
		case '"':
			return string(b), false, nil
		case '\\':
			if c, err = p.next(); err != nil {
				return "", false, err
			}
			if c != '"' && c != '\\' {
				return "", false, errIDSyntax("bad escape in a quoted string")
			}
		case '\r':
			return "", false, errIDSyntax("CR in a quoted string")
		}
		if len(b) == max {
			return "", false, errIDSyntax(fmt.Sprintf("string longer than %d octets", max))
		}
		b = append(b, c)
	}
}

// literal reads "{n}" or "{n+}", the line end, and n octets, asking for a
// synchronizing literal's data first (RFC 9051 §4.3).
func (p *idParser) literal(max int) (string, bool, error) {
	var digits []byte
	nonSync := false
	for {
		c, err := p.next()
		if err != nil {
			return "", false, err
		}
		if c == '+' && !nonSync && len(digits) > 0 {
			nonSync = true
			continue
		}
		if c == '}' && len(digits) > 0 {
			break
		}
		if c < '0' || c > '9' || nonSync || len(digits) == 10 {
			return "", false, errIDSyntax("bad literal")
		}
		digits = append(digits, c)
	}
	n, _ := strconv.ParseInt(string(digits), 10, 64)
	if err := p.crlf(); err != nil {
		return "", false, err
	}
	if n > int64(max) {
		if nonSync {
			p.litLeft = n
		}
		return "", false, errIDSyntax(fmt.Sprintf("string longer than %d octets", max))
	}
	if !nonSync {
		if err := p.g.answer("+ Ready for literal data\r\n", ""); err != nil {
			return "", false, err
		}
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(p.g.br, b); err != nil {
		return "", false, err
	}
	p.read += int(n)
	p.atLineEnd = false
	return string(b), false, nil
}

// crlf reads a line end (imapserver takes a bare LF too).
func (p *idParser) crlf() error {
	c, err := p.next()
	if p.atLineEnd {
		return nil
	}
	if err != nil {
		return err
	}
	return errIDSyntax(fmt.Sprintf("unexpected %q", c))
}

// lineEnd reads the end of the command.
func (p *idParser) lineEnd() error {
	if err := p.crlf(); err != nil {
		var syn errIDSyntax
		if errors.As(err, &syn) {
			return errIDSyntax("unexpected text after the list")
		}
		return err
	}
	return nil
}
