package mailbox

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/relaymail/relay/internal/record"
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

var errBadRecord = errors.New("malformed message record")

// appendMessage appends m's record (without its UID, which is in the key).
func appendMessage(b []byte, m Message) []byte {
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
func parseMessage(v []byte, m *Message) error {
	if len(v) > 0 && v[0] == '{' {
		return json.Unmarshal(v, m)
	}
	if len(v) == 0 || v[0] != msgFormat {
		return errBadRecord
	}
	r := record.NewReader(v[1:])
	m.Blob = r.String()
	m.Size = r.Varint()
	m.Date = time.Unix(r.Varint(), 0).UTC()
	n := r.Count(1)
	m.Flags = nil
	if n > 0 {
		m.Flags = make([]string, 0, n)
	}
	for range n {
		m.Flags = append(m.Flags, flagString(r.Bytes()))
	}
	if r.Err() != nil {
		return errBadRecord
	}
	return nil
}

// flagString returns the common flags without allocating.
func flagString(b []byte) string {
	switch string(b) {
	case `\Seen`:
		return `\Seen`
	case `\Answered`:
		return `\Answered`
	case `\Flagged`:
		return `\Flagged`
	case `\Deleted`:
		return `\Deleted`
	case `\Draft`:
		return `\Draft`
	case `$Junk`:
		return `$Junk`
	case `$NotJunk`:
		return `$NotJunk`
	case `$Forwarded`:
		return `$Forwarded`
	}
	return string(b)
}

// putMsg stores m's record at key.
func putMsg(txn *badger.Txn, key []byte, m Message) error {
	return txn.Set(key, appendMessage(nil, m))
}

// getMsg reads the record at key into m.
func getMsg(txn *badger.Txn, key []byte, m *Message) error {
	item, err := txn.Get(key)
	if err != nil {
		return err
	}
	*m, err = readMsg(item)
	return err
}

// readMsg decodes the message record item holds, with the UID from its key.
func readMsg(item *badger.Item) (Message, error) {
	var m Message
	if err := item.Value(func(v []byte) error { return parseMessage(v, &m) }); err != nil {
		return m, fmt.Errorf("message %x: %w", item.Key(), err)
	}
	m.UID = binary.BigEndian.Uint32(item.Key()[len(prefixMsg)+8:])
	return m, nil
}
