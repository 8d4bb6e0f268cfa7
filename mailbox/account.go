package mailbox

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"golang.org/x/crypto/bcrypt"
)

// Account is a mail user.
type Account struct {
	Address string    `json:"address"`
	Hash    []byte    `json:"hash"` // bcrypt
	Created time.Time `json:"created"`
}

// UserInfo is what `relay user list` shows.
type UserInfo struct {
	Address  string    `json:"address"`
	Created  time.Time `json:"created"`
	Messages int       `json:"messages"`
	Size     int64     `json:"size"`
}

// DefaultMailboxes are made with every account, with their RFC 6154
// special-use attributes.
var DefaultMailboxes = []struct{ Name, SpecialUse string }{
	{"INBOX", ""},
	{"Sent", `\Sent`},
	{"Drafts", `\Drafts`},
	{"Trash", `\Trash`},
	{"Junk", `\Junk`},
	{"Archive", `\Archive`},
}

// bcryptCost is bcrypt's default: about 50 ms per check on one core, which
// is what slows down guessing without making logins sluggish.
const bcryptCost = bcrypt.DefaultCost

func hashPassword(pw string) ([]byte, error) {
	if pw == "" {
		return nil, fmt.Errorf("%w: the password is empty", ErrBadPassword)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcryptCost)
	if errors.Is(err, bcrypt.ErrPasswordTooLong) {
		return nil, fmt.Errorf("%w: longer than 72 bytes", ErrBadPassword)
	}
	return h, err
}

func checkAddress(addr string) error {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 || strings.ContainsAny(addr, " \t\r\n<>\"") || strings.Contains(addr[:at], "+") {
		return fmt.Errorf("%w: %q (want local@domain, without +tag)", ErrBadAddress, addr)
	}
	return nil
}

// AddUser creates an account with its default mailboxes.
func (s *Store) AddUser(addr, password string) error {
	addr = NormalizeUser(addr)
	if err := checkAddress(addr); err != nil {
		return err
	}
	hash, err := hashPassword(password)
	if err != nil {
		return err
	}
	return s.update(func(txn *badger.Txn) error {
		if _, err := txn.Get(userKey(addr)); err == nil {
			return fmt.Errorf("%s: %w", addr, ErrUserExists)
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		acc := Account{Address: addr, Hash: hash, Created: s.now().UTC()}
		if err := putJSON(txn, userKey(addr), acc); err != nil {
			return err
		}
		for _, d := range DefaultMailboxes {
			if _, err := s.createMailboxTxn(txn, addr, d.Name, d.SpecialUse); err != nil {
				return err
			}
		}
		return nil
	})
}

// SetPassword replaces a user's password.
func (s *Store) SetPassword(addr, password string) error {
	addr = NormalizeUser(addr)
	hash, err := hashPassword(password)
	if err != nil {
		return err
	}
	return s.update(func(txn *badger.Txn) error {
		var acc Account
		if err := getJSON(txn, userKey(addr), &acc); errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("%s: %w", addr, ErrNoUser)
		} else if err != nil {
			return err
		}
		acc.Hash = hash
		return putJSON(txn, userKey(addr), acc)
	})
}

// DeleteUser removes an account, its mailboxes and messages. Unless force is
// set, an account that still holds mail is refused with ErrHasMail.
func (s *Store) DeleteUser(addr string, force bool) error {
	addr = NormalizeUser(addr)
	if _, err := s.userInfo(addr); err != nil {
		return err
	}
	mbs, err := s.Mailboxes(addr)
	if err != nil {
		return err
	}
	total := 0
	for _, mb := range mbs {
		total += int(mb.Messages)
	}
	if total > 0 && !force {
		return fmt.Errorf("%s holds %d message(s); use --force to delete them too: %w", addr, total, ErrHasMail)
	}
	// First the account and its mailbox names go, in one transaction that
	// reads each mailbox record: a delivery committing meanwhile makes it
	// conflict and retry, and once it commits no delivery can add a
	// message (AppendTxn needs the mailbox). Then the messages go in
	// batches, since a big mailbox does not fit one transaction. A crash
	// between the two leaves unreachable messages, never a half account.
	err = s.update(func(txn *badger.Txn) error {
		for _, old := range mbs {
			mb, err := GetMailboxTxn(txn, addr, old.Name)
			if err != nil {
				return err
			}
			if !force && anyMessageTxn(txn, mb.ID) {
				return fmt.Errorf("%s received mail meanwhile; use --force to delete it too: %w", addr, ErrHasMail)
			}
			if err := txn.Delete(mailboxKey(addr, mb.Name)); err != nil {
				return err
			}
		}
		return txn.Delete(userKey(addr))
	})
	if err != nil {
		return err
	}
	s.Notify(addr)
	for _, mb := range mbs {
		if err := s.purgeMailbox(mb.ID); err != nil {
			return err
		}
	}
	return nil
}

func anyMessageTxn(txn *badger.Txn, mboxID uint64) bool {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: msgPrefix(mboxID)})
	defer it.Close()
	it.Rewind()
	return it.Valid()
}

// ListUsers returns every account with its message count and size.
func (s *Store) ListUsers() ([]UserInfo, error) {
	var users []string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixUser)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			users = append(users, string(it.Item().Key()[len(prefixUser):]))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]UserInfo, 0, len(users))
	for _, u := range users {
		ui, err := s.userInfo(u)
		if err != nil {
			return nil, err
		}
		out = append(out, ui)
	}
	slices.SortFunc(out, func(a, b UserInfo) int { return strings.Compare(a.Address, b.Address) })
	return out, nil
}

func (s *Store) userInfo(addr string) (UserInfo, error) {
	var acc Account
	err := s.db.View(func(txn *badger.Txn) error { return getJSON(txn, userKey(addr), &acc) })
	if errors.Is(err, badger.ErrKeyNotFound) {
		return UserInfo{}, fmt.Errorf("%s: %w", addr, ErrNoUser)
	}
	if err != nil {
		return UserInfo{}, err
	}
	ui := UserInfo{Address: acc.Address, Created: acc.Created}
	mbs, err := s.Mailboxes(addr)
	if err != nil {
		return UserInfo{}, err
	}
	for _, mb := range mbs {
		ui.Messages += int(mb.Messages)
		ui.Size += mb.Size
	}
	return ui, nil
}

// UserExistsTxn reports inside txn whether addr has an account.
func UserExistsTxn(txn *badger.Txn, addr string) (bool, error) {
	_, err := txn.Get(userKey(NormalizeUser(addr)))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
}

// UserExists reports whether addr (already resolved with Resolve) has an
// account.
func (s *Store) UserExists(addr string) (bool, error) {
	addr = NormalizeUser(addr)
	err := s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(userKey(addr))
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
}

// dummyHash is compared against when the user does not exist, so that a
// wrong user name costs as long as a wrong password and the timing does not
// tell which was wrong.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("no such user, but take the time"), bcryptCost)

// Authenticate checks a user's password and returns the normalised address.
// Every failure is ErrAuth, whichever part was wrong.
func (s *Store) Authenticate(addr, password string) (string, error) {
	addr = NormalizeUser(addr)
	var acc Account
	err := s.db.View(func(txn *badger.Txn) error { return getJSON(txn, userKey(addr), &acc) })
	hash := acc.Hash
	if err != nil {
		hash = dummyHash
	}
	ok := bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil
	if err != nil || !ok || subtle.ConstantTimeCompare([]byte(acc.Address), []byte(addr)) != 1 {
		return "", ErrAuth
	}
	return addr, nil
}

// keyDomains holds the local domains the server last ran with.
const keyDomains = "m/cfg/domains"

// SetDomains records the local domains a server runs with, so that `relay
// user add` run while no server is up can tell a local address from a typo
// without being given the server's configuration again.
func (s *Store) SetDomains(domains []string) error {
	return s.update(func(txn *badger.Txn) error { return putJSON(txn, []byte(keyDomains), domains) })
}

// Domains returns the local domains SetDomains recorded last, or nil when
// no server has run on this store yet.
func (s *Store) Domains() ([]string, error) {
	var domains []string
	err := s.db.View(func(txn *badger.Txn) error { return getJSON(txn, []byte(keyDomains), &domains) })
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read local domains: %w", err)
	}
	return domains, nil
}
