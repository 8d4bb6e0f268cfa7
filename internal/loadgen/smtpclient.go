package loadgen

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Reply is one SMTP reply: the code and the text of its lines.
type Reply struct {
	Code int
	Text string
}

func (r Reply) String() string { return fmt.Sprintf("%d %s", r.Code, r.Text) }

// ReplyError is a reply that failed a command.
type ReplyError struct {
	Cmd   string
	Reply Reply
}

func (e *ReplyError) Error() string { return fmt.Sprintf("%s: %s", e.Cmd, e.Reply) }

// smtpConn is a client connection: a raw net.Conn with buffered reads and
// writes, so that commands can be pipelined.
type smtpConn struct {
	conn    net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	exts    map[string]string
	timeout time.Duration
}

// dialSMTP connects to addr, reads the greeting and says EHLO.
func dialSMTP(ctx context.Context, addr, helo string, timeout time.Duration) (*smtpConn, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	c := &smtpConn{
		conn:    conn,
		r:       bufio.NewReaderSize(conn, 4096),
		w:       bufio.NewWriterSize(conn, 64<<10),
		timeout: timeout,
	}
	if err := c.handshake(helo); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *smtpConn) handshake(helo string) error {
	c.deadline()
	if _, err := c.expect("greeting", 220); err != nil {
		return err
	}
	if err := c.writeLine("EHLO " + helo); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	rep, err := c.expect("EHLO", 250)
	if err != nil {
		return err
	}
	c.exts = parseEHLO(rep.Text)
	return nil
}

// parseEHLO turns the lines of an EHLO reply after the first into a map of
// upper-case keyword to parameters.
func parseEHLO(text string) map[string]string {
	exts := map[string]string{}
	lines := strings.Split(text, "\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
		if k != "" {
			exts[strings.ToUpper(k)] = v
		}
	}
	return exts
}

// has reports whether the server advertised extension ext.
func (c *smtpConn) has(ext string) bool {
	_, ok := c.exts[ext]
	return ok
}

// auth authenticates with AUTH PLAIN (RFC 4616) and the initial response.
func (c *smtpConn) auth(user, pass string) error {
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	c.deadline()
	if err := c.writeLine("AUTH PLAIN " + ir); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("AUTH: %w", err)
	}
	_, err := c.expect("AUTH", 235)
	return err
}

// deadline sets the read and write deadline for the next exchange.
func (c *smtpConn) deadline() {
	c.conn.SetDeadline(time.Now().Add(c.timeout))
}

func (c *smtpConn) writeLine(s string) error {
	if _, err := c.w.WriteString(s + "\r\n"); err != nil {
		return fmt.Errorf("write %q: %w", s, err)
	}
	return nil
}

// readReply reads one possibly multi-line reply. The lines' texts are
// joined with "\n".
func (c *smtpConn) readReply() (Reply, error) {
	var rep Reply
	var text []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return rep, fmt.Errorf("read reply: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return rep, fmt.Errorf("malformed reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return rep, fmt.Errorf("malformed reply line %q", line)
		}
		rep.Code = code
		if len(line) > 4 {
			text = append(text, line[4:])
		} else {
			text = append(text, "")
		}
		if len(line) == 3 || line[3] == ' ' {
			rep.Text = strings.Join(text, "\n")
			return rep, nil
		}
	}
}

// expect reads a reply and fails unless its code is want.
func (c *smtpConn) expect(cmd string, want int) (Reply, error) {
	rep, err := c.readReply()
	if err != nil {
		return rep, fmt.Errorf("%s: %w", cmd, err)
	}
	if rep.Code != want {
		return rep, &ReplyError{Cmd: cmd, Reply: rep}
	}
	return rep, nil
}

// envelope is one message to send.
type envelope struct {
	from  string
	rcpts []string
	users []int // the user index of each recipient
	msg   Message
}

// result is the outcome of one transaction: the accepted recipients (by
// index into the envelope), and the error that failed the message, if any.
type result struct {
	accepted []int
	rcptErrs []Reply
	err      error
}

// send runs one mail transaction, pipelined (RFC 2920: MAIL, RCPT and DATA
// in one write, then their replies) or in lockstep.
func (c *smtpConn) send(env envelope, pipelined bool) result {
	c.deadline()
	var res result
	if pipelined {
		res = c.sendPipelined(env)
	} else {
		res = c.sendLockstep(env)
	}
	return res
}

func (c *smtpConn) sendLockstep(env envelope) result {
	var res result
	if err := c.command("MAIL FROM:<" + env.from + ">"); err != nil {
		return result{err: err}
	}
	if _, err := c.expect("MAIL", 250); err != nil {
		return c.abort(res, err)
	}
	for i, rcpt := range env.rcpts {
		if err := c.command("RCPT TO:<" + rcpt + ">"); err != nil {
			return result{err: err}
		}
		if err := c.rcptReply(&res, i); err != nil {
			return result{err: err}
		}
	}
	if len(res.accepted) == 0 {
		return c.abort(res, noRcptError(res))
	}
	if err := c.command("DATA"); err != nil {
		return result{err: err}
	}
	if _, err := c.expect("DATA", 354); err != nil {
		return c.abort(res, err)
	}
	res.err = c.data(env.msg)
	return res
}

func (c *smtpConn) sendPipelined(env envelope) result {
	var res result
	c.writeLine("MAIL FROM:<" + env.from + ">")
	for _, rcpt := range env.rcpts {
		c.writeLine("RCPT TO:<" + rcpt + ">")
	}
	if err := c.command("DATA"); err != nil {
		return result{err: err}
	}
	_, mailErr := c.expect("MAIL", 250)
	if isNetErr(mailErr) {
		return result{err: mailErr}
	}
	for i := range env.rcpts {
		if err := c.rcptReply(&res, i); err != nil {
			return result{err: err}
		}
	}
	_, dataErr := c.expect("DATA", 354)
	if isNetErr(dataErr) {
		return result{err: dataErr}
	}
	switch {
	case dataErr == nil && (mailErr != nil || len(res.accepted) == 0):
		// The server took DATA although the envelope failed: end the empty
		// transaction and report why it failed.
		c.command(".")
		c.readReply()
		return c.abort(res, firstErr(mailErr, noRcptError(res)))
	case dataErr != nil:
		return c.abort(res, firstErr(mailErr, noRcptErrorIf(res), dataErr))
	}
	res.err = c.data(env.msg)
	return res
}

// rcptReply reads the reply to RCPT number i and records it in res.
func (c *smtpConn) rcptReply(res *result, i int) error {
	rep, err := c.readReply()
	if err != nil {
		return fmt.Errorf("RCPT: %w", err)
	}
	if rep.Code == 250 || rep.Code == 251 {
		res.accepted = append(res.accepted, i)
	} else {
		res.rcptErrs = append(res.rcptErrs, rep)
	}
	return nil
}

// data sends the message, the final dot, and reads the final reply.
func (c *smtpConn) data(m Message) error {
	c.w.Write(m.Header)
	c.w.Write(m.Body)
	if err := c.command("."); err != nil {
		return err
	}
	_, err := c.expect("DATA end", 250)
	return err
}

// command writes line and flushes the buffer.
func (c *smtpConn) command(line string) error {
	c.writeLine(line)
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// abort resets the session after a failed transaction; a network error
// while doing so replaces the transaction's error, as the connection is
// lost.
func (c *smtpConn) abort(res result, err error) result {
	res.err = err
	if isNetErr(err) {
		return res
	}
	if e := c.command("RSET"); e != nil {
		res.err = e
		return res
	}
	if _, e := c.readReply(); e != nil {
		res.err = e
	}
	return res
}

// quit says QUIT and closes the connection.
func (c *smtpConn) quit() {
	c.deadline()
	if c.command("QUIT") == nil {
		c.readReply()
	}
	c.conn.Close()
}

func noRcptError(res result) error {
	if len(res.rcptErrs) > 0 {
		return &ReplyError{Cmd: "RCPT", Reply: res.rcptErrs[0]}
	}
	return errors.New("RCPT: no recipient accepted")
}

func noRcptErrorIf(res result) error {
	if len(res.accepted) == 0 {
		return noRcptError(res)
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// isNetErr reports whether err is anything but a reply: the connection is
// then unusable.
func isNetErr(err error) bool {
	if err == nil {
		return false
	}
	var re *ReplyError
	return !errors.As(err, &re)
}

// errorKey names err for the error counts: the reply code, or "network".
func errorKey(err error) string {
	var re *ReplyError
	if errors.As(err, &re) {
		return strconv.Itoa(re.Reply.Code)
	}
	return "network"
}
