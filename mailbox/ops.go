package mailbox

import (
	"errors"
	"fmt"
	"github.com/relaymail/relay/internal/store"
	"slices"
	"strings"
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
	return s.b.UIDs(ctx, mboxID, after)
}

// GetMessages returns the records of the given UIDs (in the given order);
// UIDs no longer there are left out.
func (s *Store) GetMessages(mboxID uint64, uids []uint32) ([]Message, error) {
	return s.b.Messages(ctx, mboxID, uids)
}

// ForEachMessage calls fn for every message of a mailbox in UID order; fn
// must not keep m.Flags beyond the call.
func (s *Store) ForEachMessage(mboxID uint64, fn func(m Message) error) error {
	return s.ForEachMessageIn(mboxID, func(m Message, _ *TxnReader) error { return fn(m) })
}

// ForEachMessageIn is ForEachMessage with a reader of the same read, for a
// caller that reads more of some messages (SEARCH): a read per message cost
// as much as the reads.
func (s *Store) ForEachMessageIn(mboxID uint64, fn func(m Message, r *TxnReader) error) error {
	return s.b.ForEachMessage(ctx, mboxID, func(m Message, hr HeadReader) error {
		return fn(m, &TxnReader{hr})
	})
}

// TxnReader reads message data inside a read of ForEachMessageIn; it is
// valid only during the call that handed it out.
type TxnReader struct{ r HeadReader }

// Head is Store.Head inside the reader's read.
func (r *TxnReader) Head(m Message) ([]byte, bool, error) { return r.r.Head(ctx, m) }

// FlagChange is one message's new flags after SetFlags.
type FlagChange struct {
	UID   uint32
	Flags []string
}

// batchMessages is how many messages one transaction of a command on many
// messages (STORE, EXPUNGE, COPY, MOVE) touches. An engine refuses a
// transaction that is too large (Badger: above 15% of a memtable, about
// 4.8 MiB or 52,000 entries here), which "mark all as read" on a mailbox of
// 100,000 messages passes; small transactions also conflict less with
// deliveries into the mailbox.
const batchMessages = 2000

// inBatches runs fn on consecutive parts of uids, each one transaction of
// the backend, and calls done after each part commits. fn must start its
// results afresh on every call; a part is halved when its records still do
// not fit one transaction (messages with many keywords).
func (s *Store) inBatches(uids []uint32, fn func(part []uint32) error, done func()) error {
	n := s.batch
	for i := 0; len(uids) > 0; i++ {
		part := uids[:min(n, len(uids))]
		if s.batchFault != nil {
			if err := s.batchFault(i); err != nil {
				return err
			}
		}
		err := fn(part)
		if errors.Is(err, store.ErrTooBig) && len(part) > 1 {
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
	user, mailbox = NormalizeUser(user), CanonicalName(mailbox)
	var changes, part []FlagChange
	var mboxID uint64
	err := s.inBatches(uids, func(uids []uint32) error {
		var err error
		part, mboxID, err = s.b.SetFlags(ctx, user, mailbox, uids, op, flags)
		return err
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
	user, mailbox = NormalizeUser(user), CanonicalName(mailbox)
	if uids == nil {
		var err error
		if uids, err = s.deletedUIDs(user, mailbox); err != nil {
			return nil, err
		}
	}
	var gone, part []uint32
	var mboxID uint64
	err := s.inBatches(uids, func(uids []uint32) error {
		var err error
		part, mboxID, err = s.b.Remove(ctx, user, mailbox, uids, true)
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

// deletedUIDs lists the messages of a mailbox flagged \Deleted.
func (s *Store) deletedUIDs(user, mailbox string) ([]uint32, error) {
	mb, err := s.GetMailbox(user, mailbox)
	if err != nil {
		return nil, err
	}
	var uids []uint32
	err = s.ForEachMessage(mb.ID, func(m Message) error {
		if hasFlag(m.Flags, FlagDeleted) {
			uids = append(uids, m.UID)
		}
		return nil
	})
	return uids, err
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
	user, src, dst = NormalizeUser(user), CanonicalName(src), CanonicalName(dst)
	var res, part CopyResult
	err := s.inBatches(uids, func(uids []uint32) error {
		var err error
		part, err = s.b.Copy(ctx, user, src, dst, uids, move)
		return err
	}, func() {
		res.UIDValidity, res.SrcID, res.DstID = part.UIDValidity, part.SrcID, part.DstID
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
		s.publish(user, Event{Mailbox: res.SrcID, Expunged: gone, Source: sourceUnless(err, source)})
	}
	if res.DstID != 0 && (err == nil || move) {
		s.Notify(user)
	}
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// removeCopies takes back the copies a failed COPY made.
func (s *Store) removeCopies(user, dst string, uids []uint32) error {
	return s.inBatches(uids, func(uids []uint32) error {
		_, _, err := s.b.Remove(ctx, user, dst, uids, false)
		return err
	}, func() {})
}

// ClaimRecent hands the messages that arrived since the last claim to the
// calling session, as Dovecot does with \Recent: each message is recent in
// exactly one session. It returns the first UID that is recent for the
// caller; UIDs from there up to UIDNEXT-1 are.
func (s *Store) ClaimRecent(user, mailbox string) (first, next uint32, err error) {
	return s.b.ClaimRecent(ctx, NormalizeUser(user), CanonicalName(mailbox))
}

// DeleteMailbox removes a mailbox and its messages. INBOX cannot be deleted
// (RFC 3501 §6.3.4). Child mailboxes stay.
func (s *Store) DeleteMailbox(user, name string) error {
	user, name = NormalizeUser(user), CanonicalName(name)
	if name == "INBOX" {
		return fmt.Errorf("INBOX cannot be deleted: %w", ErrNotAllowed)
	}
	return s.b.DeleteMailbox(ctx, user, name)
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
	return s.b.RenameMailbox(ctx, user, old, new)
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

// SetSubscribed adds or removes name in user's subscription list; the name
// need not exist (RFC 9051 §6.3.7).
func (s *Store) SetSubscribed(user, name string, on bool) error {
	return s.b.SetSubscribed(ctx, NormalizeUser(user), CanonicalName(name), on)
}
