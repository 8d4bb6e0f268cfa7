package imapd

import (
	"io"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/relaymail/relay/mailbox"
)

// Keywords (RFC 9051 §2.3.2) need no declaring: STORE or APPEND of any
// flag that is not a system flag makes one, and PERMANENTFLAGS says so
// with \*. A client learns which flags a mailbox uses from FLAGS (RFC 3501
// §7.2.6, RFC 9051 §7.3.5), at SELECT and whenever the set grows, and some
// clients ignore a flag in FETCH that FLAGS never named. So a session
// lists at SELECT the keywords its messages carry and, before any FETCH
// response that shows one it has not named yet, sends FLAGS again (and,
// read-write, PERMANENTFLAGS), as Dovecot does.

// systemFlags are the flags every mailbox has (RFC 9051 §2.3.2).
var systemFlags = []imap.Flag{imap.FlagSeen, imap.FlagAnswered, imap.FlagFlagged, imap.FlagDeleted, imap.FlagDraft}

// keywordSet is the flags beyond the system flags that a session has
// named, in the order it met them; flags compare without case.
type keywordSet struct {
	names []imap.Flag
	known map[string]bool // lower case
}

// learn adds the keywords among flags and reports whether one was new.
func (k *keywordSet) learn(flags []string) bool {
	fresh := false
	for _, f := range flags {
		if isSystemFlag(f) || strings.EqualFold(f, `\Recent`) || !isFlagAtom(f) {
			continue
		}
		low := strings.ToLower(f)
		if k.known[low] {
			continue
		}
		if k.known == nil {
			k.known = map[string]bool{}
		}
		k.known[low] = true
		k.names = append(k.names, imap.Flag(strings.Clone(f)))
		fresh = true
	}
	return fresh
}

// isFlagAtom reports whether f can be written as a flag (RFC 9051 §9:
// an atom, or "\" and an atom); the store holds nothing else, but FLAGS
// is written by hand.
func isFlagAtom(f string) bool {
	f = strings.TrimPrefix(f, `\`)
	return f != "" && !strings.ContainsFunc(f, func(r rune) bool {
		return r <= ' ' || r >= 0x7f || strings.ContainsRune(`(){%*"\]`, r)
	})
}

func isSystemFlag(f string) bool {
	return slices.ContainsFunc(systemFlags, func(s imap.Flag) bool { return strings.EqualFold(string(s), f) })
}

// flagList is the FLAGS list: the system flags and the keywords.
func (v *view) flagList() []imap.Flag {
	return append(slices.Clip(systemFlags), v.keywords.names...)
}

// permanentFlags is the PERMANENTFLAGS list: nothing in a read-only
// session, else every flag of the mailbox and \* for new keywords.
func (v *view) permanentFlags() []imap.Flag {
	if v.readOnly {
		return nil
	}
	return append(v.flagList(), imap.FlagWildcard)
}

// announceKeywords tells the client, before a FETCH response shows them,
// of the keywords in the flags of items that it has not been told of.
func announceKeywords[T any](v *view, items []T, flags func(T) []string) error {
	fresh := false
	for _, it := range items {
		fresh = v.keywords.learn(flags(it)) || fresh
	}
	if !fresh {
		return nil
	}
	return v.announceFlags()
}

func messageFlags(m mailbox.Message) []string { return m.Flags }

// announceFlags sends FLAGS, and PERMANENTFLAGS in a read-write session,
// with the keywords learnt since the last time.
func (v *view) announceFlags() error {
	var b strings.Builder
	b.WriteString("* FLAGS ")
	writeFlagList(&b, v.flagList())
	b.WriteString("\r\n")
	if !v.readOnly {
		b.WriteString("* OK [PERMANENTFLAGS ")
		writeFlagList(&b, v.permanentFlags())
		b.WriteString("] Permanent flags\r\n")
	}
	return v.s.writeUntagged(b.String())
}

func writeFlagList(b *strings.Builder, flags []imap.Flag) {
	b.WriteByte('(')
	for i, f := range flags {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(string(f))
	}
	b.WriteByte(')')
}

// writeUntagged writes untagged responses between two of imapserver's,
// which has none of these writers for every command: imapserver flushes
// each response whole, so nothing of its own waits in its buffer.
func (s *session) writeUntagged(text string) error {
	c := s.conn.NetConn()
	c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	defer c.SetWriteDeadline(time.Time{})
	_, err := io.WriteString(c, text)
	return err
}
