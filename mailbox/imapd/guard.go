package imapd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Limits the guard enforces on every connection, whatever the command.
const (
	// maxBadCommands tagged BAD replies in a row end the session, like an
	// SMTP server's errors-per-session limit: a client that keeps sending
	// garbage is broken or probing.
	maxBadCommands = 10
	// maxCommandText bounds the bytes of one command outside literals.
	// imapserver stops parsing at 50 KiB and then runs the rest of the line
	// as further commands; the guard ends the session just before that.
	maxCommandText = 48 << 10
	// maxCommandLiterals bounds the bytes of one command's small literals
	// (up to 4096 bytes each, the most imapserver takes outside APPEND).
	// imapserver counts none of them, so without this a single SEARCH
	// could hold thousands of 4 KiB strings, before login too.
	maxCommandLiterals = 64 << 10
	// bufferedLiteral is imapserver's limit on a literal it reads into
	// memory; only APPEND takes larger ones, streaming, up to APPENDLIMIT.
	bufferedLiteral = 4096
	// maxSkip is the largest refused non-synchronizing literal the guard
	// reads past to find the next command; a larger one ends the session.
	maxSkip = 1 << 20
	// handshakeTimeout bounds the TLS handshake after STARTTLS.
	handshakeTimeout = 30 * time.Second
)

// guardConn sits between a client connection and imapserver, which reads
// and parses commands itself without a hook for the backend. So the limits
// that must hold for any command live here, on the byte stream: the guard
// follows the IMAP framing (lines and {n} literals, RFC 9051 §4.3) in both
// directions and
//
//   - hands imapserver one line at a time, so the library never buffers
//     more than the command it is parsing;
//   - ends the session after maxBadCommands tagged BAD replies in a row,
//     and when a command exceeds maxCommandText or maxCommandLiterals;
//   - skips a non-synchronizing literal whose command the library refused
//     without reading it, instead of letting its bytes run as commands;
//   - turns imapserver's generic "NO [SERVERBUG] Internal server error",
//     which it gives for arguments it cannot decode, into BAD [CLIENTBUG]
//     (see clientFault);
//   - performs STARTTLS itself, discarding whatever the client sent after
//     the command before the handshake (the CVE-2011-0411 class of
//     plain-text injection, RFC 9051 §6.2.1: nothing sent before TLS may
//     be acted on after it), and then hands the TLS connection to the
//     server's TLS instance, so the guard keeps seeing plain text.
type guardConn struct {
	net.Conn
	srv    *Server
	br     *bufio.Reader
	secure bool // TLS: implicit, or after STARTTLS
	ip     string
	// secureLn takes the connection after STARTTLS.
	secureLn *chanListener

	authenticated atomic.Bool
	handedOver    atomic.Bool // after STARTTLS: another guard owns Conn

	// Read side, used by imapserver's reading goroutine only.
	in inbound

	// Write side, under wmu.
	wmu          sync.Mutex
	out          outbound
	dropGreeting bool // the new session's greeting after STARTTLS
	bad          int  // tagged BAD replies in a row
	origins      originPlacer

	// Between the two sides.
	mu       sync.Mutex
	finished bool // a tagged reply was written since the last Read
	conts    int  // continuation requests written
	closing  bool
}

// inbound is the client side's framing state.
type inbound struct {
	tag      []byte // of the command being read
	lineLen  int    // bytes of the current line so far
	tail     []byte // its last bytes, to recognise a literal announcement
	text     int    // command bytes outside literals
	literals int    // bytes of small literals in this command
	// open: a command has been handed on and not answered yet, so a new
	// line is its continuation (SASL, IDLE's DONE), not a command.
	open bool

	litLeft    int64 // bytes of literal still to come
	afterLit   bool  // a literal ended and its line has not
	litNonSync bool
	litConts   int  // conts when the literal was announced
	skipping   bool // discarding a refused command's remainder
	cr         bool // the bytes handed on so far end in a CR
}

// outbound is the server side's framing state.
type outbound struct {
	lineLen int
	head    []byte
	tail    []byte
	litLeft int64
}

func newGuard(c net.Conn, srv *Server, secure bool) *guardConn {
	return &guardConn{Conn: c, srv: srv, br: bufio.NewReaderSize(c, 16<<10), secure: secure}
}

var errGuardClosed = errors.New("imapd: connection closed by a limit")

// Read hands imapserver at most one line, or literal data, at a time.
func (g *guardConn) Read(p []byte) (int, error) {
	if g.handedOver.Load() {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if err := g.commandFinished(); err != nil {
			return 0, err
		}
		in := &g.in
		if !in.open && in.lineLen == 0 && in.litLeft == 0 && !in.skipping {
			if err := g.commandStart(); err != nil {
				return 0, err
			}
		}
		if _, err := g.br.Peek(1); err != nil {
			return 0, err
		}
		buf, _ := g.br.Peek(g.br.Buffered())
		skipping := in.skipping
		if !skipping && len(buf) > len(p) {
			buf = buf[:len(p)]
		}
		var n int
		var err error
		if in.litLeft > 0 {
			n = g.literalData(buf)
		} else {
			n, err = g.lineData(buf)
		}
		if !skipping {
			copy(p, buf[:n])
		}
		g.br.Discard(n)
		if err != nil {
			return 0, err
		}
		if !skipping {
			return n, nil
		}
	}
}

// maxTag bounds a tag: the guard must see a command's first line up to
// its end before handing it on (to recognise STARTTLS), and buffers at
// most this much of it.
const maxTag = 1024

// commandStart waits until the first line of the next command is
// buffered, or maxTag bytes of it, and handles STARTTLS and bad tags.
func (g *guardConn) commandStart() error {
	for {
		buf, err := g.br.Peek(max(g.br.Buffered(), 1))
		if err != nil {
			return err
		}
		line, _, complete := bytes.Cut(buf, []byte("\n"))
		if !complete && len(buf) < maxTag {
			if _, err := g.br.Peek(len(buf) + 1); err != nil {
				return err
			}
			continue
		}
		if complete {
			line = buf[:len(line)+1]
		}
		tag := tagOf(line)
		g.in.tag = append(g.in.tag[:0], tag[:min(len(tag), maxTag)]...)
		switch {
		case !complete && len(tag) >= maxTag:
			return g.violate("tag too long")
		case bytes.IndexByte(tag, '+') >= 0:
			// RFC 9051 §9: a tag has no "+", which would make the reply
			// look like a continuation request.
			return g.violate("invalid tag")
		case complete && g.isStartTLS(line):
			tag := string(tag)
			g.br.Discard(len(line))
			return g.startTLS(tag)
		case complete && isID(line):
			if err := g.answerID(string(tag)); err != nil {
				return err
			}
			if g.in.skipping {
				return nil
			}
			continue
		}
		return nil
	}
}

// literalData returns how much of buf belongs to the current literal.
func (g *guardConn) literalData(buf []byte) int {
	in := &g.in
	n := int(min(int64(len(buf)), in.litLeft))
	in.litLeft -= int64(n)
	in.afterLit = in.litLeft == 0
	return n
}

// lineData returns how much of buf belongs to the current line, at most
// through its LF, and counts it against the command's budget.
func (g *guardConn) lineData(buf []byte) (int, error) {
	in := &g.in
	n := len(buf)
	if i := bytes.IndexByte(buf, '\n'); i >= 0 {
		n = i + 1
	}
	seg := buf[:n]
	if !in.skipping && bareCR(seg, in.cr) {
		// RFC 9051 §9: outside a literal, CR comes only before LF.
		// imapserver ends a line at a lone CR when it skips the rest
		// of a failed command, and runs what follows as a command that
		// the guard, ending lines at LF, never saw begin: a tag with
		// "+", a STARTTLS, a count of BADs out of step.
		return 0, g.end("CLIENTBUG", "CR without LF outside a literal")
	}
	in.cr = seg[n-1] == '\r'
	in.lineLen += n
	in.text += n
	in.tail = keepTail(in.tail, seg, 32)
	if in.text > maxCommandText {
		return 0, g.violate("command line too long")
	}
	if !in.skipping {
		in.open = true
	}
	if seg[n-1] == '\n' {
		return n, g.endLine()
	}
	return n, nil
}

// bareCR reports a CR in seg that no LF follows; afterCR says the bytes
// before seg ended in a CR. A CR at the end of seg is decided by the next
// segment.
func bareCR(seg []byte, afterCR bool) bool {
	if afterCR && seg[0] != '\n' {
		return true
	}
	for i := bytes.IndexByte(seg, '\r'); i >= 0 && i < len(seg)-1; {
		if seg[i+1] != '\n' {
			return true
		}
		j := bytes.IndexByte(seg[i+1:], '\r')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return false
}

// endLine runs at the end of a client line: a literal announcement opens a
// literal, otherwise the command is complete.
func (g *guardConn) endLine() error {
	in := &g.in
	n, nonSync, ok := literalAt(in.tail, true)
	in.lineLen, in.tail, in.afterLit = 0, in.tail[:0], false
	if !ok || in.skipping && !nonSync {
		// The command is complete; or, while skipping a refused one, the
		// client waits for a continuation that will not come: what it
		// sends next is a new command.
		in.skipping = false
		return nil
	}
	if in.skipping && n > maxSkip {
		return g.violate("refused literal too long")
	}
	if n > bufferedLiteral && !in.skipping && !g.authenticated.Load() {
		// Before login only LOGIN and AUTHENTICATE take strings, and
		// imapserver reads none over bufferedLiteral; for a synchronizing
		// one it would wait 30 s for data it never asked for, holding
		// the connection of a client that has not logged in.
		return g.refuseCommand("TOOBIG", "literal too large before login")
	}
	in.litLeft, in.litNonSync = n, nonSync
	g.mu.Lock()
	in.litConts = g.conts
	g.mu.Unlock()
	if n <= bufferedLiteral && !in.skipping {
		in.literals += int(n)
		if in.literals > maxCommandLiterals {
			return g.violate("command literals too long")
		}
	}
	return nil
}

// commandFinished looks at what the write side saw: after a tagged reply
// the next bytes start a new command, except the rest of a literal the
// client is sending regardless (non-synchronizing, or after a continuation
// request), which is skipped with the rest of its command.
func (g *guardConn) commandFinished() error {
	g.mu.Lock()
	done, conts := g.finished, g.conts
	g.finished = false
	g.mu.Unlock()
	if !done {
		return nil
	}
	in := &g.in
	in.text, in.literals, in.open = 0, 0, false
	if in.skipping {
		return nil
	}
	if in.litLeft == 0 {
		if in.lineLen > 0 || in.afterLit {
			// Answered before the end of its last line: imapserver
			// gives up on a bad argument after a literal without
			// reading the line's rest, which would then be taken for
			// the next command.
			in.skipping = true
		}
		return nil
	}
	if !in.litNonSync && conts == in.litConts {
		// A synchronizing literal refused before its continuation
		// request: the client does not send it.
		in.litLeft = 0
		return nil
	}
	if in.litLeft > maxSkip {
		return g.violate("refused literal too long")
	}
	in.skipping = true
	return nil
}

// violate ends the session over a limit.
func (g *guardConn) violate(why string) error { return g.end("LIMIT", why) }

// end ends the session with an untagged BYE (RFC 9051 §7.1.5) with the
// RFC 5530 response code and closes the connection; imapserver then sees
// the read fail.
func (g *guardConn) end(code, why string) error {
	g.srv.cfg.Log.Warn("imap session ended", "client", g.ip, "reason", why)
	g.closeWith("* BYE [" + code + "] " + why + "\r\n")
	return fmt.Errorf("%w: %s", errGuardClosed, why)
}

// refuseCommand ends the session over the command being read, which
// imapserver has not seen the end of: BYE, then a tagged BAD with the
// response code, so that the client waits for nothing (as after LOGOUT,
// RFC 9051 §6.1.3, BYE comes before the tagged reply).
func (g *guardConn) refuseCommand(code, why string) error {
	g.srv.cfg.Log.Warn("imap session ended", "client", g.ip, "reason", why)
	tag := "*"
	if validTag(g.in.tag) {
		tag = string(g.in.tag)
	}
	g.closeWith("* BYE [LIMIT] " + why + "\r\n" + tag + " BAD [" + code + "] " + why + "\r\n")
	return fmt.Errorf("%w: %s", errGuardClosed, why)
}

// closeWith writes the last lines of a session, unless imapserver is in
// the middle of a response, and closes the connection.
func (g *guardConn) closeWith(lines string) {
	g.mu.Lock()
	g.closing = true
	g.mu.Unlock()
	g.wmu.Lock()
	if g.out.lineLen == 0 && g.out.litLeft == 0 {
		g.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(g.Conn, lines)
	}
	g.wmu.Unlock()
	g.Conn.Close()
}

// isStartTLS reports whether line is a STARTTLS command the guard should
// perform: TLS is configured, the connection is plain and nobody has
// logged in (otherwise imapserver answers it, with NO or BAD).
func (g *guardConn) isStartTLS(line []byte) bool {
	if g.srv.cfg.TLS == nil || g.secure || g.authenticated.Load() {
		return false
	}
	if !bytes.HasSuffix(line, []byte("\n")) {
		return false
	}
	tag, cmd, ok := bytes.Cut(bytes.TrimRight(line, " \r\n"), []byte(" "))
	return ok && bytes.EqualFold(cmd, []byte("STARTTLS")) && validTag(tag)
}

// tagOf returns the first word of a command line.
func tagOf(line []byte) []byte {
	tag, _, _ := bytes.Cut(line, []byte(" "))
	return bytes.TrimRight(tag, "\r\n")
}

// validTag: an IMAP tag is one or more ASTRING-CHARs other than "+"
// (RFC 9051 §9).
func validTag(tag []byte) bool {
	for _, c := range tag {
		if c <= ' ' || c >= 0x7f || bytes.IndexByte([]byte(`(){%*"\+`), c) >= 0 {
			return false
		}
	}
	return len(tag) > 0
}

// startTLS answers STARTTLS, drops the plain text the client pipelined
// after it, does the handshake and gives the TLS connection to the TLS
// instance of the server. It always returns an error: for imapserver this
// plain-text session is over.
func (g *guardConn) startTLS(tag string) error {
	g.wmu.Lock()
	g.Conn.SetWriteDeadline(time.Now().Add(handshakeTimeout))
	_, err := fmt.Fprintf(g.Conn, "%s OK Begin TLS negotiation now\r\n", tag)
	g.wmu.Unlock()
	if err != nil {
		g.Conn.Close()
		return err
	}
	// Whatever followed the command in the same packets was sent before
	// TLS and may come from a man in the middle: it is dropped, never run.
	if n := g.br.Buffered(); n > 0 {
		g.srv.cfg.Log.Warn("imap STARTTLS: discarding pipelined plain text", "client", g.ip, "bytes", n)
		g.br.Discard(n)
	}
	g.handedOver.Store(true)
	raw := g.Conn
	tc := tls.Server(raw, g.srv.cfg.TLS)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	raw.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return fmt.Errorf("imapd: STARTTLS handshake: %w", err)
	}
	raw.SetDeadline(time.Time{})
	next := newGuard(tc, g.srv, true)
	next.ip, next.secureLn = g.ip, g.secureLn
	next.dropGreeting = true
	g.wmu.Lock()
	next.bad = g.bad
	g.wmu.Unlock()
	if !g.secureLn.offer(next) {
		tc.Close()
	}
	return io.EOF
}

// Write passes imapserver's output on, watching it for tagged replies.
func (g *guardConn) Write(p []byte) (int, error) {
	if g.handedOver.Load() {
		return 0, net.ErrClosed
	}
	g.wmu.Lock()
	defer g.wmu.Unlock()
	n := len(p)
	if g.dropGreeting {
		// After STARTTLS the client expects no greeting (RFC 9051 §6.2.1);
		// imapserver, starting a session, writes one.
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			return n, nil
		}
		g.dropGreeting = false
		p = p[i+1:]
	}
	if g.out.lineLen == 0 && g.out.litLeft == 0 && len(g.origins.held) == 0 {
		p = advertiseID(clientFault(p))
	}
	if g.origins.active() {
		p = g.origins.place(p)
	}
	tagged := g.scanOut(p)
	if _, err := g.Conn.Write(p); err != nil {
		return 0, err
	}
	for _, st := range tagged {
		if err := g.reply(st); err != nil {
			return n, err
		}
	}
	return n, nil
}

// libraryFault is imapserver's reply when a command fails with an error
// that is neither an IMAP status nor a syntax error it recognises. The
// session never returns such an error (serverError turns every failure
// into an IMAP status with its own text), so this reply comes from
// imapserver's decoding of the client's arguments: a mailbox name or LIST
// pattern that is not modified UTF-7 (RFC 3501 §5.1.3), a sequence set or
// date that does not parse, or a literal it refused. That is the client's
// error (RFC 9051 §7.1: BAD), not a server fault.
var libraryFault = []byte(" NO [SERVERBUG] Internal server error\r\n")

const clientFaultText = " BAD [CLIENTBUG] invalid argument: a mailbox name or pattern that is not modified UTF-7, or a malformed sequence set, date or literal\r\n"

// clientFault rewrites p when it is the tagged libraryFault reply, which
// imapserver writes in one piece at the start of a line.
func clientFault(p []byte) []byte {
	tag, ok := bytes.CutSuffix(p, libraryFault)
	if !ok || len(tag) == 0 || bytes.Equal(tag, []byte("*")) || bytes.ContainsAny(tag, " \r\n") {
		return p
	}
	return append(tag[:len(tag):len(tag)], clientFaultText...)
}

// advertiseID adds ID (RFC 2971), which the guard answers, to the
// capabilities imapserver lists: in a CAPABILITY response and in the
// CAPABILITY code of the greeting and of the reply to LOGIN or
// AUTHENTICATE. imapserver writes each of them in one piece.
func advertiseID(p []byte) []byte {
	line, _, ok := bytes.Cut(p, []byte("\n"))
	if !ok {
		return p
	}
	var at int
	if rest, ok := bytes.CutPrefix(line, []byte("* CAPABILITY ")); ok {
		at = len(line) - len(rest) + len(bytes.TrimRight(rest, "\r"))
		if hasWord(rest, "ID") {
			return p
		}
	} else {
		tag, rest, _ := bytes.Cut(line, []byte(" "))
		status, rest, _ := bytes.Cut(rest, []byte(" "))
		caps, ok := bytes.CutPrefix(rest, []byte("[CAPABILITY "))
		end := bytes.IndexByte(caps, ']')
		if len(tag) == 0 || !ok || end < 0 || hasWord(caps[:end], "ID") ||
			!bytes.Equal(status, []byte("OK")) && !bytes.Equal(status, []byte("PREAUTH")) {
			return p
		}
		at = len(line) - len(caps) + end
	}
	out := make([]byte, 0, len(p)+3)
	out = append(out, p[:at]...)
	out = append(out, " ID"...)
	return append(out, p[at:]...)
}

// hasWord reports whether the space-separated list holds w.
func hasWord(list []byte, w string) bool {
	for f := range bytes.FieldsSeq(list) {
		if bytes.EqualFold(f, []byte(w)) {
			return true
		}
	}
	return false
}

// reply notes one tagged reply of imapserver's and counts it.
func (g *guardConn) reply(status string) error {
	g.mu.Lock()
	g.finished = true
	g.mu.Unlock()
	return g.count(status)
}

// count counts a tagged reply's status (none for a continuation request);
// the last of too many BADs in a row is followed by BYE. Under wmu.
func (g *guardConn) count(status string) error {
	switch status {
	case "":
		return nil
	case "BAD":
	default:
		g.bad = 0
		return nil
	}
	g.bad++
	if g.bad < maxBadCommands {
		return nil
	}
	g.srv.cfg.Log.Warn("imap session ended", "client", g.ip, "reason", "too many bad commands")
	g.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(g.Conn, "* BYE [LIMIT] too many bad commands\r\n")
	g.Conn.Close()
	return errGuardClosed
}

// scanOut follows the server's framing through p and returns the status
// (OK, NO, BAD) of each tagged reply that ends in it.
func (g *guardConn) scanOut(p []byte) []string {
	var tagged []string
	o := &g.out
	for len(p) > 0 {
		if o.litLeft > 0 {
			n := int(min(int64(len(p)), o.litLeft))
			o.litLeft -= int64(n)
			p = p[n:]
			continue
		}
		i := bytes.IndexByte(p, '\n')
		seg := p
		if i >= 0 {
			seg = p[:i+1]
		}
		p = p[len(seg):]
		o.lineLen += len(seg)
		if len(o.head) < 32 {
			o.head = append(o.head, seg[:min(len(seg), 32-len(o.head))]...)
		}
		o.tail = keepTail(o.tail, seg, 32)
		if i < 0 {
			continue
		}
		kind, status := classify(o.head)
		switch kind {
		case respTagged:
			tagged = append(tagged, status)
		case respContinue:
			g.mu.Lock()
			g.conts++
			g.mu.Unlock()
		case respData:
			if n, _, ok := literalAt(o.tail, false); ok {
				o.litLeft = n
			}
		}
		o.lineLen, o.head, o.tail = 0, o.head[:0], o.tail[:0]
	}
	return tagged
}

type respKind int

const (
	respData     respKind = iota // untagged data, which may end in a literal
	respStatus                   // untagged status: text to the end of line
	respContinue                 // continuation request
	respTagged                   // tagged status reply
)

// classify tells a server line's kind from its first bytes (RFC 9051 §7).
func classify(head []byte) (respKind, string) {
	if bytes.HasPrefix(head, []byte("+")) {
		return respContinue, ""
	}
	tag, rest, _ := bytes.Cut(head, []byte(" "))
	word, _, _ := bytes.Cut(rest, []byte(" "))
	word = bytes.TrimRight(word, "\r\n")
	status := ""
	for _, s := range []string{"OK", "NO", "BAD", "BYE", "PREAUTH"} {
		if bytes.EqualFold(word, []byte(s)) {
			status = s
		}
	}
	switch {
	case string(tag) != "*" && status != "":
		return respTagged, status
	case status != "":
		return respStatus, status
	}
	return respData, ""
}

// literalAt recognises a literal announcement, "{n}" (client side also
// "{n+}", and "~{n}" for literal8), at the end of a line whose last bytes
// are tail.
func literalAt(tail []byte, client bool) (n int64, nonSync, ok bool) {
	// imapserver takes a space before the CRLF, and a bare LF.
	t := bytes.TrimSuffix(bytes.TrimSuffix(tail, []byte("\n")), []byte("\r"))
	if client {
		t = bytes.TrimSuffix(t, []byte(" "))
	}
	if !bytes.HasSuffix(t, []byte("}")) {
		return 0, false, false
	}
	t = t[:len(t)-1]
	if client && bytes.HasSuffix(t, []byte("+")) {
		nonSync = true
		t = t[:len(t)-1]
	}
	i := bytes.LastIndexByte(t, '{')
	if i < 0 || i == len(t)-1 {
		return 0, false, false
	}
	digits := t[i+1:]
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false, false
		}
	}
	n, err := strconv.ParseInt(string(digits), 10, 64)
	if err != nil {
		// More digits than fit: a literal larger than anything allowed.
		n = 1 << 62
	}
	return n, nonSync, true
}

// keepTail appends seg to tail and keeps the last max bytes.
func keepTail(tail, seg []byte, max int) []byte {
	if len(seg) >= max {
		return append(tail[:0], seg[len(seg)-max:]...)
	}
	tail = append(tail, seg...)
	if len(tail) > max {
		tail = append(tail[:0], tail[len(tail)-max:]...)
	}
	return tail
}

// Close closes the connection, unless STARTTLS has handed it on.
func (g *guardConn) Close() error {
	if g.handedOver.Load() {
		return nil
	}
	return g.Conn.Close()
}

// SetDeadline and friends pass through until STARTTLS hands the
// connection on; the old imapserver session must not touch it then.
func (g *guardConn) SetDeadline(t time.Time) error {
	if g.handedOver.Load() {
		return nil
	}
	return g.Conn.SetDeadline(t)
}

func (g *guardConn) SetReadDeadline(t time.Time) error {
	if g.handedOver.Load() {
		return nil
	}
	return g.Conn.SetReadDeadline(t)
}

func (g *guardConn) SetWriteDeadline(t time.Time) error {
	if g.handedOver.Load() {
		return nil
	}
	return g.Conn.SetWriteDeadline(t)
}
