package mailbox

import "strings"

// Mailbox is one folder of an account.
type Mailbox struct {
	ID          uint64 `json:"id"`
	User        string `json:"user"`
	Name        string `json:"name"`
	SpecialUse  string `json:"special_use,omitempty"`
	UIDValidity uint32 `json:"uidvalidity"`
	UIDNext     uint32 `json:"uidnext"`
	Subscribed  bool   `json:"subscribed"`
	// Messages and Size are kept with every insert and removal, so STATUS
	// needs no scan.
	Messages uint32 `json:"messages"`
	Size     int64  `json:"size"`
	Unseen   uint32 `json:"unseen"`
	// FirstRecent is the lowest UID not yet claimed as \Recent by a
	// session (ClaimRecent).
	FirstRecent uint32 `json:"first_recent,omitempty"`
}

// Delimiter is the hierarchy delimiter of mailbox names.
const Delimiter = '/'

// CanonicalName spells INBOX in capitals whatever the client sent (RFC 3501
// §5.1: INBOX is case-insensitive); other names keep their case.
func CanonicalName(name string) string {
	if strings.EqualFold(name, "INBOX") {
		return "INBOX"
	}
	if len(name) > 6 && strings.EqualFold(name[:6], "INBOX/") {
		return "INBOX" + name[5:]
	}
	return name
}

// CreateMailbox makes a mailbox for user.
func (s *Store) CreateMailbox(user, name, specialUse string) (*Mailbox, error) {
	return s.b.CreateMailbox(ctx, NormalizeUser(user), NewMailbox{Name: CanonicalName(name), SpecialUse: specialUse})
}

// GetMailbox reads one of user's mailboxes.
func (s *Store) GetMailbox(user, name string) (*Mailbox, error) {
	return s.b.Mailbox(ctx, NormalizeUser(user), CanonicalName(name))
}

// Mailboxes lists user's mailboxes in name order.
func (s *Store) Mailboxes(user string) ([]*Mailbox, error) {
	return s.b.Mailboxes(ctx, NormalizeUser(user))
}

// Subscriptions lists the names user subscribed to, which need not exist.
func (s *Store) Subscriptions(user string) ([]string, error) {
	return s.b.Subscriptions(ctx, NormalizeUser(user))
}
