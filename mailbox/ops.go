package mailbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/dgraph-io/badger/v4"
)

// Flag names with meaning to the store; keywords are kept as given.
const (
	FlagSeen    = `\Seen`
	FlagDeleted = `\Deleted`
)

// HasFlag reports whether flags holds f, compared without regard to case.
func HasFlag(flags []string, f string) bool { return hasFlag(flags, f) }

func hasFlag(flags []string, f string) bool {
	return slices.ContainsFunc(flags, func(x string) bool { return strings.EqualFold(x, f) })
}

// FlagOp is how SetFlags changes flags.
type FlagOp int

// Flag operations (IMAP STORE FLAGS, +FLAGS, -FLAGS).
const (
	FlagsReplace FlagOp = iota
	FlagsAdd
	FlagsRemove
)

// ApplyFlags returns the flag set cur becomes after op with flags: what
// every engine stores for STORE.
func ApplyFlags(cur []string, op FlagOp, flags []string) []string { return applyFlags(cur, op, flags) }

// applyFlags returns the flag set after op, without duplicates (compared
// case-insensitively, as RFC 3501 §2.3.2 has it) and without \Recent, which
// is per session and never stored.
func applyFlags(cur []string, op FlagOp, flags []string) []string {
	var out []string
	add := func(f string) {
		if !strings.EqualFold(f, `\Recent`) && !hasFlag(out, f) {
			out = append(out, f)
		}
	}
	switch op {
	case FlagsReplace:
		for _, f := range flags {
			add(f)
		}
	case FlagsAdd:
		for _, f := range cur {
			add(f)
		}
		for _, f := range flags {
			add(f)
		}
	case FlagsRemove:
		for _, f := range cur {
			if !hasFlag(flags, f) {
				add(f)
			}
		}
	}
	return out
}

// UIDs returns the UIDs of a mailbox in order: the sequence-number map of a
// SELECT. Only keys are read.
func (s *Store) UIDs(mboxID uint64) ([]uint32, error) {
	return s.UIDsAfter(mboxID, 0)
}

// UIDsAfter returns the UIDs above after, in order: the new arrivals since a
// session last looked.
func (s *Store) UIDsAfter(mboxID uint64, after uint32) ([]uint32, error) {
	var uids []uint32
	err := s.db.View(func(txn *badger.Txn) error {
		prefix := msgPrefix(mboxID)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(msgKey(mboxID, after+1)); it.ValidForPrefix(prefix); it.Next() {
			uids = append(uids, binary.BigEndian.Uint32(it.Item().Key()[len(prefix):]))
		}
		return nil
	})
	return uids, err
}

// GetMessages returns the records of the given UIDs (in the given order);
// UIDs no longer there are left out.
func (s *Store) GetMessages(mboxID uint64, uids []uint32) ([]Message, error) {
	out := make([]Message, 0, len(uids))
	err := s.db.View(func(txn *badger.Txn) error {
		for _, uid := range uids {
			item, err := txn.Get(msgKey(mboxID, uid))
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			m, err := readMsg(item)
			if err != nil {
				return err
			}
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// ForEachMessage calls fn for every message of a mailbox in UID order, with
// values prefetched; fn must not keep m.Flags beyond the call.
func (s *Store) ForEachMessage(mboxID uint64, fn func(m Message) error) error {
	return s.ForEachMessageIn(mboxID, func(m Message, _ *TxnReader) error { return fn(m) })
}

// ForEachMessageIn is ForEachMessage with a reader of the same transaction,
// for a caller that reads more of some messages (SEARCH): a transaction per
// message cost as much as the reads.
func (s *Store) ForEachMessageIn(mboxID uint64, fn func(m Message, r *TxnReader) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		prefix := msgPrefix(mboxID)
		// No prefetching, here and in the store's other iterations:
		// Badger starts a goroutine for each prefetched item, which
		// for records kept in the tree (all but bodies and headers)
		// costs more than reading them in turn. SEARCH UNSEEN on
		// 10,000 messages: 17-19 ms with it, 10 ms without.
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
		defer it.Close()
		r := &TxnReader{txn: txn}
		for it.Rewind(); it.Valid(); it.Next() {
			m, err := readMsg(it.Item())
			if err != nil {
				return err
			}
			if err := fn(m, r); err != nil {
				return err
			}
		}
		return nil
	})
}

// TxnReader reads message data inside a read transaction; it is valid only
// during the call that handed it out.
type TxnReader struct{ txn *badger.Txn }

// Head is Store.Head inside the reader's transaction.
func (r *TxnReader) Head(m Message) ([]byte, bool, error) { return headTxn(r.txn, m) }

// FlagChange is one message's new flags after SetFlags.
type FlagChange struct {
	UID   uint32
	Flags []string
}

// batchMessages is how many messages one transaction of a command on many
// messages (STORE, EXPUNGE, COPY, MOVE) touches. Badger refuses a
// transaction above 15% of a memtable (about 4.8 MiB or 52,000 entries
// here), which "mark all as read" on a mailbox of 100,000 messages passes;
// small transactions also conflict less with deliveries into the mailbox.
const batchMessages = 2000

// inBatches runs fn on consecutive parts of uids, each in a transaction of
// its own, and calls done after each part commits. fn must start its
// results afresh on every call: a part is retried after a conflict, and
// halved when its records still do not fit one transaction (messages with
// many keywords).
func (s *Store) inBatches(uids []uint32, fn func(txn *badger.Txn, part []uint32) error, done func()) error {
	n := s.batch
	for i := 0; len(uids) > 0; i++ {
		part := uids[:min(n, len(uids))]
		if s.batchFault != nil {
			if err := s.batchFault(i); err != nil {
				return err
			}
		}
		err := s.update(func(txn *badger.Txn) error { return fn(txn, part) })
		if errors.Is(err, badger.ErrTxnTooBig) && len(part) > 1 {
			n = len(part) / 2
			continue
		}
		if err != nil {
			return err
		}
		done()
		uids = uids[len(part):]
	}
	return nil
}

// SetFlags changes the flags of the given messages of user's mailbox and
// returns their new flags. source identifies the caller so that its own
// change is not echoed back to it as an unsolicited update. Each message
// changes wholly or not at all; when an error stops the command partway,
// the messages already changed are announced to every session, the caller's
// too, since it gets no list of them.
func (s *Store) SetFlags(user, mailbox string, uids []uint32, op FlagOp, flags []string, source any) ([]FlagChange, error) {
	var changes, part []FlagChange
	var mboxID uint64
	err := s.inBatches(uids, func(txn *badger.Txn, uids []uint32) error {
		part = part[:0]
		mb, err := GetMailboxTxn(txn, user, mailbox)
		if err != nil {
			return err
		}
		mboxID = mb.ID
		for _, uid := range uids {
			var m Message
			if err := getMsg(txn, msgKey(mb.ID, uid), &m); errors.Is(err, badger.ErrKeyNotFound) {
				continue
			} else if err != nil {
				return err
			}
			wasSeen := hasFlag(m.Flags, FlagSeen)
			m.Flags = applyFlags(m.Flags, op, flags)
			switch seen := hasFlag(m.Flags, FlagSeen); {
			case wasSeen && !seen:
				mb.Unseen++
			case !wasSeen && seen:
				mb.Unseen--
			}
			if err := putMsg(txn, msgKey(mb.ID, uid), m); err != nil {
				return err
			}
			part = append(part, FlagChange{UID: uid, Flags: m.Flags})
		}
		return putMailbox(txn, mb)
	}, func() { changes = append(changes, part...) })
	if len(changes) > 0 {
		uidsChanged := make([]uint32, len(changes))
		for i, c := range changes {
			uidsChanged[i] = c.UID
		}
		s.publish(user, Event{Mailbox: mboxID, Flags: uidsChanged, Source: sourceUnless(err, source)})
	}
	if err != nil {
		return nil, err
	}
	return changes, nil
}

// sourceUnless is the source of an event, or nil, which reaches every
// session, when the command failed after part of its work committed.
func sourceUnless(err error, source any) any {
	if err != nil {
		return nil
	}
	return source
}

// Expunge removes the messages among uids (all messages when uids is nil)
// that carry \Deleted, and returns the removed UIDs in order. As with
// SetFlags, an error partway leaves the messages removed until then
// removed, and announced to every session.
func (s *Store) Expunge(user, mailbox string, uids []uint32, source any) ([]uint32, error) {
	if uids == nil {
		var err error
		if uids, err = s.deletedUIDs(user, mailbox); err != nil {
			return nil, err
		}
	}
	var gone, part []uint32
	var mboxID uint64
	err := s.inBatches(uids, func(txn *badger.Txn, uids []uint32) error {
		var err error
		part, mboxID, err = s.removeMessagesTxn(txn, user, mailbox, uids, true, part[:0])
		return err
	}, func() { gone = append(gone, part...) })
	slices.Sort(gone)
	if len(gone) > 0 {
		s.publish(user, Event{Mailbox: mboxID, Expunged: gone, Source: sourceUnless(err, source)})
	}
	if err != nil {
		return nil, err
	}
	return gone, nil
}

// deletedUIDs lists the messages of a mailbox that carry \Deleted.
func (s *Store) deletedUIDs(user, mailbox string) ([]uint32, error) {
	var uids []uint32
	err := s.db.View(func(txn *badger.Txn) error {
		mb, err := GetMailboxTxn(txn, user, mailbox)
		if err != nil {
			return err
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: msgPrefix(mb.ID), PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			m, err := readMsg(it.Item())
			if err != nil {
				return err
			}
			if hasFlag(m.Flags, FlagDeleted) {
				uids = append(uids, m.UID)
			}
		}
		return nil
	})
	return uids, err
}

// removeTxn deletes one message record, keeps the mailbox counters and drops
// the blob reference; the caller writes mb back.
func (s *Store) removeTxn(txn *badger.Txn, mb *Mailbox, m Message) error {
	if err := txn.Delete(msgKey(mb.ID, m.UID)); err != nil {
		return err
	}
	mb.Messages--
	mb.Size -= m.Size
	if !hasFlag(m.Flags, FlagSeen) {
		mb.Unseen--
	}
	return unrefBlob(txn, m.Blob, m.Size)
}

// CopyResult maps source UIDs to the UIDs the copies got.
type CopyResult struct {
	// SrcID and DstID are the two mailboxes' IDs.
	SrcID, DstID uint64
	UIDValidity  uint32
	SrcUIDs      []uint32
	DstUIDs      []uint32
}

// Copy copies messages to another mailbox of the same user (the body is
// shared, not copied); with move set, each original is removed in the
// transaction that makes its copy, so a message is never in both mailboxes
// nor in neither (RFC 6851 §3.3). Many messages go in several
// transactions: a COPY that fails partway removes the copies it made (RFC
// 3501 §6.4.7), a MOVE leaves what it moved moved and announces it to
// every session.
func (s *Store) Copy(user, src, dst string, uids []uint32, move bool, source any) (*CopyResult, error) {
	var res, part CopyResult
	var srcID, dstID uint64
	err := s.inBatches(uids, func(txn *badger.Txn, uids []uint32) error {
		part = CopyResult{SrcUIDs: part.SrcUIDs[:0], DstUIDs: part.DstUIDs[:0]}
		from, err := GetMailboxTxn(txn, user, src)
		if err != nil {
			return err
		}
		to, err := GetMailboxTxn(txn, user, dst)
		if err != nil {
			return err
		}
		srcID, dstID = from.ID, to.ID
		part.UIDValidity = to.UIDValidity
		same := from.ID == to.ID
		if same {
			// One record, counted once: the copies and any removals
			// all go against it.
			to = from
		}
		for _, uid := range uids {
			var m Message
			if err := getMsg(txn, msgKey(from.ID, uid), &m); errors.Is(err, badger.ErrKeyNotFound) {
				continue
			} else if err != nil {
				return err
			}
			m.UID = uid
			if err := refBlob(txn, m.Blob); err != nil {
				return err
			}
			flags := m.Flags
			newUID := to.UIDNext
			to.UIDNext++
			to.Messages++
			to.Size += m.Size
			if !hasFlag(flags, FlagSeen) {
				to.Unseen++
			}
			if err := putMsg(txn, msgKey(to.ID, newUID), Message{Blob: m.Blob, Size: m.Size, Date: m.Date, Flags: flags}); err != nil {
				return err
			}
			if move {
				if err := s.removeTxn(txn, from, m); err != nil {
					return err
				}
			}
			part.SrcUIDs = append(part.SrcUIDs, uid)
			part.DstUIDs = append(part.DstUIDs, newUID)
		}
		if !same {
			if err := putMailbox(txn, from); err != nil {
				return err
			}
		}
		return putMailbox(txn, to)
	}, func() {
		res.UIDValidity = part.UIDValidity
		res.SrcUIDs = append(res.SrcUIDs, part.SrcUIDs...)
		res.DstUIDs = append(res.DstUIDs, part.DstUIDs...)
	})
	if err != nil && !move && len(res.DstUIDs) > 0 {
		if uerr := s.removeCopies(user, dst, res.DstUIDs); uerr != nil {
			err = fmt.Errorf("%w (and removing the copies made: %w)", err, uerr)
		}
	}
	if move && len(res.SrcUIDs) > 0 {
		gone := slices.Clone(res.SrcUIDs)
		slices.Sort(gone)
		s.publish(user, Event{Mailbox: srcID, Expunged: gone, Source: sourceUnless(err, source)})
	}
	if dstID != 0 && (err == nil || move) {
		s.Notify(user)
	}
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// removeCopies takes back the messages a failed COPY made in dst. Nobody
// has been told of them, so they go without an announcement; UIDNEXT stays
// where the copies moved it, since UIDs are never given out twice.
func (s *Store) removeCopies(user, dst string, uids []uint32) error {
	return s.inBatches(uids, func(txn *badger.Txn, uids []uint32) error {
		_, _, err := s.removeMessagesTxn(txn, user, dst, uids, false, nil)
		return err
	}, func() {})
}

// removeMessagesTxn removes those of uids that exist in user's mailbox
// (only those flagged \Deleted when deletedOnly), keeps its counters, and
// returns the removed UIDs appended to gone, and the mailbox's ID.
func (s *Store) removeMessagesTxn(txn *badger.Txn, user, mailbox string, uids []uint32, deletedOnly bool, gone []uint32) ([]uint32, uint64, error) {
	mb, err := GetMailboxTxn(txn, user, mailbox)
	if err != nil {
		return gone, 0, err
	}
	for _, uid := range uids {
		var m Message
		if err := getMsg(txn, msgKey(mb.ID, uid), &m); errors.Is(err, badger.ErrKeyNotFound) {
			continue
		} else if err != nil {
			return gone, mb.ID, err
		}
		m.UID = uid
		if deletedOnly && !hasFlag(m.Flags, FlagDeleted) {
			continue
		}
		if err := s.removeTxn(txn, mb, m); err != nil {
			return gone, mb.ID, err
		}
		gone = append(gone, uid)
	}
	return gone, mb.ID, putMailbox(txn, mb)
}

func refBlob(txn *badger.Txn, blob string) error {
	n, err := refs(txn, blob)
	if err != nil {
		return err
	}
	return txn.Set(refKey(blob), binary.BigEndian.AppendUint32(nil, n+1))
}

// ClaimRecent hands the messages that arrived since the last claim to the
// calling session, as Dovecot does with \Recent: each message is recent in
// exactly one session. It returns the first UID that is recent for the
// caller; UIDs from there up to UIDNEXT-1 are.
func (s *Store) ClaimRecent(user, mailbox string) (first, next uint32, err error) {
	err = s.update(func(txn *badger.Txn) error {
		mb, err := GetMailboxTxn(txn, user, mailbox)
		if err != nil {
			return err
		}
		first, next = max(mb.FirstRecent, 1), mb.UIDNext
		if first >= next {
			return nil
		}
		mb.FirstRecent = next
		return putMailbox(txn, mb)
	})
	return first, next, err
}

// DeleteMailbox removes a mailbox and its messages. INBOX cannot be deleted
// (RFC 3501 §6.3.4). Child mailboxes stay.
func (s *Store) DeleteMailbox(user, name string) error {
	user, name = NormalizeUser(user), CanonicalName(name)
	if name == "INBOX" {
		return fmt.Errorf("INBOX cannot be deleted: %w", ErrNotAllowed)
	}
	mb, err := s.GetMailbox(user, name)
	if err != nil {
		return err
	}
	// The name goes first, so the mailbox vanishes at once; the messages
	// follow in batches.
	if err := s.update(func(txn *badger.Txn) error { return txn.Delete(mailboxKey(user, name)) }); err != nil {
		return err
	}
	err = s.purgeMailbox(mb.ID)
	s.Notify(user)
	return err
}

// ErrNotAllowed refuses an operation the protocol forbids.
var ErrNotAllowed = errors.New("operation not allowed")

// RenameMailbox renames a mailbox and its children (RFC 3501 §6.3.5).
// Renaming INBOX moves its messages to the new mailbox and leaves INBOX
// empty.
func (s *Store) RenameMailbox(user, old, new string) error {
	user, old, new = NormalizeUser(user), CanonicalName(old), CanonicalName(new)
	if new == "INBOX" {
		return fmt.Errorf("cannot rename to INBOX: %w", ErrMailboxExist)
	}
	if old == "INBOX" {
		return s.renameInbox(user, new)
	}
	return s.update(func(txn *badger.Txn) error {
		mbs, err := mailboxesTxn(txn, user)
		if err != nil {
			return err
		}
		found := false
		for _, mb := range mbs {
			if mb.Name == new || strings.HasPrefix(mb.Name, new+string(Delimiter)) {
				return fmt.Errorf("%s: %w", mb.Name, ErrMailboxExist)
			}
		}
		for _, mb := range mbs {
			var rest string
			switch {
			case mb.Name == old:
				found = true
			case strings.HasPrefix(mb.Name, old+string(Delimiter)):
				rest = mb.Name[len(old):]
			default:
				continue
			}
			if err := txn.Delete(mailboxKey(user, mb.Name)); err != nil {
				return err
			}
			mb.Name = new + rest
			if err := putMailbox(txn, mb); err != nil {
				return err
			}
		}
		if !found {
			return fmt.Errorf("%s: %w", old, ErrNoMailbox)
		}
		return nil
	})
}

func (s *Store) renameInbox(user, new string) error {
	if _, err := s.CreateMailbox(user, new, ""); err != nil {
		return err
	}
	uids, err := s.UIDs(mustID(s.GetMailbox(user, "INBOX")))
	if err != nil {
		return err
	}
	if len(uids) == 0 {
		return nil
	}
	// Copy moves them in transactions that fit, however many there are.
	_, err = s.Copy(user, "INBOX", new, uids, true, nil)
	return err
}

func mustID(mb *Mailbox, err error) uint64 {
	if err != nil {
		return 0
	}
	return mb.ID
}

func mailboxesTxn(txn *badger.Txn, user string) ([]*Mailbox, error) {
	var out []*Mailbox
	it := txn.NewIterator(badger.IteratorOptions{Prefix: mailboxPrefix(user), PrefetchValues: false})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		mb, err := readMailbox(it.Item())
		if err != nil {
			return nil, err
		}
		out = append(out, mb)
	}
	return out, nil
}

// SetSubscribed subscribes or unsubscribes a mailbox.
func (s *Store) SetSubscribed(user, name string, on bool) error {
	return s.update(func(txn *badger.Txn) error {
		mb, err := GetMailboxTxn(txn, user, name)
		if err != nil {
			return err
		}
		mb.Subscribed = on
		return putMailbox(txn, mb)
	})
}
