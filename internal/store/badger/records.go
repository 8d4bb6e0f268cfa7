package badger

import (
	"encoding/binary"
	"fmt"
	"time"

	bdg "github.com/dgraph-io/badger/v4"

	"github.com/relaymail/relay/internal/record"
	"github.com/relaymail/relay/mailbox"
)

// A message record is read on every SEARCH, FETCH and SELECT over a
// mailbox, 10,000 times for one SEARCH UNSEEN of a 10,000-message INBOX,
// so it has a compact binary form rather than JSON (which took a third of
// the CPU under an IMAP client load):
//
//	0x01 | uvarint len(blob) blob | varint size | varint unix seconds |
//	uvarint len(flags) { uvarint len(flag) flag }
//
// Records written as JSON (they start with '{') still read.
const msgFormat = 0x01

// appendMessage appends m's record (without its UID, which is in the key).
func appendMessage(b []byte, m mailbox.Message) []byte {
	b = append(b, msgFormat)
	b = record.AppendString(b, m.Blob)
	b = record.AppendVarint(b, m.Size)
	b = record.AppendVarint(b, m.Date.Unix())
	b = record.AppendUvarint(b, uint64(len(m.Flags)))
	for _, f := range m.Flags {
		b = record.AppendString(b, f)
	}
	return b
}

// parseMessage decodes a record into m, leaving m.UID alone. The strings
// are copies: v belongs to Badger.
func parseMessage(v []byte, m *mailbox.Message) error {
	r, done, err := record.Open(v, msgFormat, m)
	if done || err != nil {
		return err
	}
	m.Blob = r.String()
	m.Size = r.Varint()
	m.Date = time.Unix(r.Varint(), 0).UTC()
	n := r.Count(1)
	m.Flags = nil
	if n > 0 {
		m.Flags = make([]string, 0, n)
	}
	for range n {
		m.Flags = append(m.Flags, r.Interned(commonFlags))
	}
	return r.Err()
}

// commonFlags are the flags read without allocating.
var commonFlags = []string{`\Seen`, `\Answered`, `\Flagged`, `\Deleted`, `\Draft`, `$Junk`, `$NotJunk`, `$Forwarded`}

// putMsg stores m's record at key.
func putMsg(txn *bdg.Txn, key []byte, m mailbox.Message) error {
	return txn.Set(key, appendMessage(nil, m))
}

// getMsg reads the record at key into m.
func getMsg(txn *bdg.Txn, key []byte, m *mailbox.Message) error {
	item, err := txn.Get(key)
	if err != nil {
		return err
	}
	*m, err = readMsg(item)
	return err
}

// readMsg decodes the message record item holds, with the UID from its key.
func readMsg(item *bdg.Item) (mailbox.Message, error) {
	var m mailbox.Message
	if err := item.Value(func(v []byte) error { return parseMessage(v, &m) }); err != nil {
		return m, fmt.Errorf("message %x: %w", item.Key(), err)
	}
	m.UID = binary.BigEndian.Uint32(item.Key()[len(prefixMsg)+8:])
	return m, nil
}

// A mailbox record is read and rewritten by every delivery into the mailbox
// (UIDNEXT and the counters) and read by every SELECT and STATUS:
//
//	0x01 | uvarint id | user | name | special use | uvarint uidvalidity |
//	uvarint uidnext | subscribed | uvarint messages | varint size |
//	uvarint unseen | uvarint first recent
//
// with strings and the boolean as internal/record writes them. Records
// written as JSON still read.
const mailboxFormat = 0x01

func appendMailbox(b []byte, mb *mailbox.Mailbox) []byte {
	b = append(b, mailboxFormat)
	b = record.AppendUvarint(b, mb.ID)
	b = record.AppendString(b, mb.User)
	b = record.AppendString(b, mb.Name)
	b = record.AppendString(b, mb.SpecialUse)
	b = record.AppendUvarint(b, uint64(mb.UIDValidity))
	b = record.AppendUvarint(b, uint64(mb.UIDNext))
	b = record.AppendBool(b, mb.Subscribed)
	b = record.AppendUvarint(b, uint64(mb.Messages))
	b = record.AppendVarint(b, mb.Size)
	b = record.AppendUvarint(b, uint64(mb.Unseen))
	b = record.AppendUvarint(b, uint64(mb.FirstRecent))
	return b
}

func parseMailbox(v []byte, mb *mailbox.Mailbox) error {
	r, done, err := record.Open(v, mailboxFormat, mb)
	if done || err != nil {
		return err
	}
	*mb = mailbox.Mailbox{
		ID:          r.Uvarint(),
		User:        r.String(),
		Name:        r.String(),
		SpecialUse:  r.String(),
		UIDValidity: r.Uint32(),
		UIDNext:     r.Uint32(),
		Subscribed:  r.Bool(),
		Messages:    r.Uint32(),
		Size:        r.Varint(),
		Unseen:      r.Uint32(),
		FirstRecent: r.Uint32(),
	}
	return r.Err()
}

// putMailbox stores mb under its key.
func putMailbox(txn *bdg.Txn, mb *mailbox.Mailbox) error {
	return txn.Set(mailboxKey(mb.User, mb.Name), appendMailbox(nil, mb))
}

// readMailbox decodes the mailbox record item holds.
func readMailbox(item *bdg.Item) (*mailbox.Mailbox, error) {
	mb := new(mailbox.Mailbox)
	if err := item.Value(func(v []byte) error { return parseMailbox(v, mb) }); err != nil {
		return nil, fmt.Errorf("mailbox %q: %w", item.Key(), err)
	}
	return mb, nil
}
