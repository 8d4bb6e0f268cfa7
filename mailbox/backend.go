package mailbox

import (
	"context"
	"io"
	"time"
)

// Backend is the storage the mailbox store needs, in its own terms:
// accounts, mailboxes with their UIDs, messages with their flags, the bodies
// (blobs) they share, a few settings, and change notifications that reach
// every node. A storage engine implements it (internal/store/badger,
// internal/store/postgres); Store adds the rules that do not depend on the
// engine (names, passwords, batching, who hears of a change).
//
// Names and addresses reach a Backend already normalized (NormalizeUser,
// CanonicalName). Every method is one transaction unless it says otherwise,
// is safe for concurrent use, and reports ErrNoUser, ErrNoMailbox,
// ErrMailboxExist, ErrUserExists, ErrHasMail or a neutral error of
// internal/store (ErrNoSpace, ErrUnavailable...), wrapped with context.
type Backend interface {
	// CreateAccount stores acc with the given mailboxes.
	CreateAccount(ctx context.Context, acc Account, boxes []NewMailbox) error
	// Account reads one account.
	Account(ctx context.Context, addr string) (*Account, error)
	// SetPasswordHash replaces an account's password hash.
	SetPasswordHash(ctx context.Context, addr string, hash []byte) error
	// DeleteAccount removes an account; with mail in it only when force,
	// and then its mail too.
	DeleteAccount(ctx context.Context, addr string, force bool) error
	// Accounts lists every account with its message count and size.
	Accounts(ctx context.Context) ([]UserInfo, error)

	// Setting reads a small value shared by every node (nil when unset);
	// PutSetting writes it.
	Setting(ctx context.Context, name string) ([]byte, error)
	PutSetting(ctx context.Context, name string, value []byte) error

	// CreateMailbox makes a mailbox with a fresh UIDVALIDITY.
	CreateMailbox(ctx context.Context, user string, box NewMailbox) (*Mailbox, error)
	// Mailbox reads one mailbox; Mailboxes all of an account's, by name.
	Mailbox(ctx context.Context, user, name string) (*Mailbox, error)
	Mailboxes(ctx context.Context, user string) ([]*Mailbox, error)
	// DeleteMailbox removes a mailbox and the messages in it. It may take
	// several transactions for a large mailbox, but the name goes first.
	DeleteMailbox(ctx context.Context, user, name string) error
	// RenameMailbox renames a mailbox other than INBOX and its children.
	RenameMailbox(ctx context.Context, user, old, new string) error
	// Subscriptions lists an account's subscribed names (which need not
	// exist); SetSubscribed adds or removes one.
	Subscriptions(ctx context.Context, user string) ([]string, error)
	SetSubscribed(ctx context.Context, user, name string, on bool) error

	// Append stores body as a new message at the mailbox's UIDNEXT.
	Append(ctx context.Context, user, mailbox string, body io.Reader, date time.Time, flags []string) (*Mailbox, uint32, error)
	// UIDs lists the UIDs above after, ascending.
	UIDs(ctx context.Context, mbox uint64, after uint32) ([]uint32, error)
	// Messages reads the records of uids, in that order, leaving out
	// those that are gone.
	Messages(ctx context.Context, mbox uint64, uids []uint32) ([]Message, error)
	// ForEachMessage calls fn for every message of a mailbox in UID order
	// within one read; r reads header copies in that same read.
	ForEachMessage(ctx context.Context, mbox uint64, fn func(m Message, r HeadReader) error) error
	// Open reads a message's body; Head its stored header section, with
	// ok false when there is none (the caller reads the body instead).
	Open(ctx context.Context, m Message) io.ReadCloser
	HeadReader

	// The batch operations: each is one transaction over at most a
	// few thousand UIDs (Store splits larger requests).
	//
	// SetFlags changes the flags of uids and returns the new flags of
	// those that exist, with the mailbox's ID.
	SetFlags(ctx context.Context, user, mailbox string, uids []uint32, op FlagOp, flags []string) ([]FlagChange, uint64, error)
	// Remove deletes uids (only those flagged \Deleted when deletedOnly)
	// and returns those it removed, with the mailbox's ID.
	Remove(ctx context.Context, user, mailbox string, uids []uint32, deletedOnly bool) ([]uint32, uint64, error)
	// Copy copies uids from src to dst at dst's UIDNEXT (and removes them
	// from src when move).
	Copy(ctx context.Context, user, src, dst string, uids []uint32, move bool) (CopyResult, error)
	// ClaimRecent hands out the UIDs no session has seen as \Recent yet:
	// [first, next).
	ClaimRecent(ctx context.Context, user, mailbox string) (first, next uint32, err error)

	// Publish tells every node that user's mailboxes changed (after the
	// change committed); each node's Store hears it through the function
	// given to OnChange, its own changes included.
	Publish(user string, ev Event)
	OnChange(fn func(user string, ev Event))
}

// HeadReader reads the stored header section of a message.
type HeadReader interface {
	Head(ctx context.Context, m Message) (head []byte, ok bool, err error)
}

// NewMailbox is a mailbox to create.
type NewMailbox struct {
	Name       string
	SpecialUse string
	Subscribed bool
}
