package mailbox

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

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

// AddUser creates an account with its default mailboxes, subscribed.
func (s *Store) AddUser(addr, password string) error {
	addr = NormalizeUser(addr)
	if err := checkAddress(addr); err != nil {
		return err
	}
	hash, err := hashPassword(password)
	if err != nil {
		return err
	}
	boxes := make([]NewMailbox, len(DefaultMailboxes))
	for i, d := range DefaultMailboxes {
		boxes[i] = NewMailbox{Name: d.Name, SpecialUse: d.SpecialUse, Subscribed: true}
	}
	return s.b.CreateAccount(ctx, Account{Address: addr, Hash: hash, Created: s.now().UTC()}, boxes)
}

// SetPassword replaces a user's password.
func (s *Store) SetPassword(addr, password string) error {
	hash, err := hashPassword(password)
	if err != nil {
		return err
	}
	return s.b.SetPasswordHash(ctx, NormalizeUser(addr), hash)
}

// DeleteUser removes an account; one that holds mail only with force, and
// its mail with it.
func (s *Store) DeleteUser(addr string, force bool) error {
	return s.b.DeleteAccount(ctx, NormalizeUser(addr), force)
}

// ListUsers lists every account with its message count and size, by
// address.
func (s *Store) ListUsers() ([]UserInfo, error) { return s.b.Accounts(ctx) }

// UserExists reports whether addr (normalized) is an account.
func (s *Store) UserExists(addr string) (bool, error) {
	_, err := s.b.Account(ctx, NormalizeUser(addr))
	if errors.Is(err, ErrNoUser) {
		return false, nil
	}
	return err == nil, err
}

// dummyHash is compared against when the account does not exist, so that
// a failed login takes as long whether or not the user exists.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("no such user, but as slow"), bcryptCost)

// Authenticate checks a user's password and returns the account address.
// It answers ErrAuth for an unknown user and a wrong password alike, in the
// same time.
func (s *Store) Authenticate(addr, password string) (string, error) {
	addr = NormalizeUser(addr)
	acc, err := s.b.Account(ctx, addr)
	hash := dummyHash
	if err == nil {
		hash = acc.Hash
	}
	ok := bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil
	if err != nil || !ok || subtle.ConstantTimeCompare([]byte(acc.Address), []byte(addr)) != 1 {
		if err != nil && !errors.Is(err, ErrNoUser) {
			return "", err
		}
		return "", ErrAuth
	}
	return addr, nil
}

// settingDomains holds the local domains the server last ran with.
const settingDomains = "domains"

// SetDomains records the local domains a server runs with, so that `relay
// user add` run while no server is up can tell a local address from a typo
// without being given the server's configuration again.
func (s *Store) SetDomains(domains []string) error {
	b, err := json.Marshal(domains)
	if err != nil {
		return err
	}
	return s.b.PutSetting(ctx, settingDomains, b)
}

// Domains returns the local domains SetDomains recorded last, or nil when
// no server has run on this store yet.
func (s *Store) Domains() ([]string, error) {
	b, err := s.b.Setting(ctx, settingDomains)
	if err != nil || b == nil {
		return nil, err
	}
	var domains []string
	if err := json.Unmarshal(b, &domains); err != nil {
		return nil, fmt.Errorf("read local domains: %w", err)
	}
	return domains, nil
}
