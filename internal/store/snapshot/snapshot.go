// Package snapshot is the engine-neutral backup of a relay store: every
// account with its password hash, mailboxes (with UIDVALIDITY, UIDNEXT and
// the UIDs, flags and dates of their messages), subscriptions, the message
// bodies, the settings, and the queue with each recipient's state. A backup
// taken from one engine restores into an empty store of the other, so a
// site moves from Badger to PostgreSQL (or back) with `relay store backup`
// and `relay store restore`, and IMAP clients see the same UIDs after it.
//
// The file is a tar archive, written and read in one pass:
//
//	relay-snapshot.json      format version, time, source engine
//	settings/<name>          a setting's value
//	blobs/<id>               a message body, once however many mailboxes hold it
//	accounts/<n>.json        an account, its subscriptions and mailboxes with their messages
//	queue/<id>.json          a queued message's envelope and recipients
//	queue/<id>.eml           its body
//
// Bodies come before the accounts that refer to them, so that a restore
// never holds more than one body at a time.
package snapshot

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// Format is the version of the file this package writes.
const Format = 1

// Reader reads a store as it was at one moment (one read transaction).
type Reader interface {
	// Settings calls fn for every setting.
	Settings(fn func(name string, value []byte) error) error
	// Accounts calls fn for every account, by address.
	Accounts(fn func(acc mailbox.Account) error) error
	// Subscriptions lists an account's subscribed names.
	Subscriptions(user string) ([]string, error)
	// Mailboxes lists an account's mailboxes.
	Mailboxes(user string) ([]*mailbox.Mailbox, error)
	// Messages calls fn for every message of a mailbox in UID order.
	Messages(mbox uint64, fn func(m mailbox.Message) error) error
	// Blob opens a message body.
	Blob(m mailbox.Message) (io.ReadCloser, error)
	// Queue calls fn for every queued message in ID order.
	Queue(fn func(m *spool.Message) error) error
	// Body opens a queued message's body.
	Body(m *spool.Message) (io.ReadCloser, error)
}

// Source is an engine that can be read at one moment.
type Source interface {
	// Snapshot runs fn on a Reader that sees the store as it was when
	// Snapshot began, whatever commits meanwhile.
	Snapshot(ctx context.Context, fn func(Reader) error) error
}

// Target is an engine that a backup can be restored into.
type Target interface {
	// Empty reports whether the store holds no account, no queued message
	// and no mail: restore refuses anything else.
	Empty(ctx context.Context) (bool, error)
	// RestoreSetting writes a setting.
	RestoreSetting(ctx context.Context, name string, value []byte) error
	// RestoreBlob stores a body under id with no holder yet; the messages
	// that hold it count their references as they are restored.
	RestoreBlob(ctx context.Context, id string, body io.Reader) error
	// RestoreAccount stores an account with its subscriptions.
	RestoreAccount(ctx context.Context, acc mailbox.Account, subs []string) error
	// RestoreMailbox makes a mailbox with the given UIDVALIDITY, UIDNEXT
	// and first unclaimed \Recent UID, holding msgs at their UIDs (their
	// blobs restored before); counters follow from msgs. UIDVALIDITY
	// values given out later stay above every restored one.
	RestoreMailbox(ctx context.Context, user string, mb mailbox.Mailbox, msgs []mailbox.Message) error
	// RestoreQueued queues m with its recipients' state as it is.
	RestoreQueued(ctx context.Context, m *spool.Message, body io.Reader) error
}

// header is the first entry.
type header struct {
	Format  int       `json:"format"`
	Created time.Time `json:"created"`
	Source  string    `json:"source"`
}

// account is one accounts/<n>.json entry.
type account struct {
	Address       string    `json:"address"`
	Hash          []byte    `json:"hash"`
	Created       time.Time `json:"created"`
	Subscriptions []string  `json:"subscriptions"`
	Mailboxes     []box     `json:"mailboxes"`
}

type box struct {
	Name        string    `json:"name"`
	SpecialUse  string    `json:"special_use,omitempty"`
	UIDValidity uint32    `json:"uidvalidity"`
	UIDNext     uint32    `json:"uidnext"`
	FirstRecent uint32    `json:"first_recent,omitempty"`
	Messages    []message `json:"messages"`
}

type message struct {
	UID   uint32    `json:"uid"`
	Blob  string    `json:"blob"`
	Size  int64     `json:"size"`
	Date  time.Time `json:"date"`
	Flags []string  `json:"flags,omitempty"`
}

// Stats counts what a backup or restore carried.
type Stats struct {
	Accounts, Mailboxes, Messages, Blobs, Queued, Settings int
}

func (s Stats) String() string {
	return fmt.Sprintf("%d account(s), %d mailbox(es), %d message(s) in %d bod(ies), %d queued message(s), %d setting(s)",
		s.Accounts, s.Mailboxes, s.Messages, s.Blobs, s.Queued, s.Settings)
}

// Write writes a backup of what r sees to w; source names the engine.
func Write(w io.Writer, r Reader, source string, now time.Time) (Stats, error) {
	var st Stats
	tw := tar.NewWriter(w)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), ModTime: now}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	putJSON := func(name string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		return put(name, b)
	}
	if err := putJSON("relay-snapshot.json", header{Format: Format, Created: now, Source: source}); err != nil {
		return st, err
	}
	err := r.Settings(func(name string, value []byte) error {
		st.Settings++
		return put("settings/"+name, value)
	})
	if err != nil {
		return st, fmt.Errorf("settings: %w", err)
	}
	// First pass: every body held by a message, once.
	var users []mailbox.Account
	if err := r.Accounts(func(a mailbox.Account) error { users = append(users, a); return nil }); err != nil {
		return st, fmt.Errorf("accounts: %w", err)
	}
	written := map[string]bool{}
	for _, a := range users {
		mbs, err := r.Mailboxes(a.Address)
		if err != nil {
			return st, fmt.Errorf("mailboxes of %s: %w", a.Address, err)
		}
		for _, mb := range mbs {
			err := r.Messages(mb.ID, func(m mailbox.Message) error {
				if written[m.Blob] {
					return nil
				}
				written[m.Blob] = true
				st.Blobs++
				return copyEntry(tw, "blobs/"+m.Blob, m.Size, now, func() (io.ReadCloser, error) { return r.Blob(m) })
			})
			if err != nil {
				return st, fmt.Errorf("bodies in %s of %s: %w", mb.Name, a.Address, err)
			}
		}
	}
	// Second pass: the accounts, their mailboxes and messages.
	for i, a := range users {
		subs, err := r.Subscriptions(a.Address)
		if err != nil {
			return st, err
		}
		acc := account{Address: a.Address, Hash: a.Hash, Created: a.Created.UTC(), Subscriptions: subs}
		mbs, err := r.Mailboxes(a.Address)
		if err != nil {
			return st, err
		}
		for _, mb := range mbs {
			b := box{Name: mb.Name, SpecialUse: mb.SpecialUse, UIDValidity: mb.UIDValidity, UIDNext: mb.UIDNext, FirstRecent: mb.FirstRecent}
			err := r.Messages(mb.ID, func(m mailbox.Message) error {
				b.Messages = append(b.Messages, message{UID: m.UID, Blob: m.Blob, Size: m.Size, Date: m.Date.UTC(), Flags: m.Flags})
				return nil
			})
			if err != nil {
				return st, err
			}
			st.Mailboxes++
			st.Messages += len(b.Messages)
			acc.Mailboxes = append(acc.Mailboxes, b)
		}
		st.Accounts++
		if err := putJSON(fmt.Sprintf("accounts/%d.json", i), acc); err != nil {
			return st, err
		}
	}
	err = r.Queue(func(m *spool.Message) error {
		st.Queued++
		normalize(m)
		if err := putJSON("queue/"+m.ID+".json", m); err != nil {
			return err
		}
		return copyEntry(tw, "queue/"+m.ID+".eml", m.Size, now, func() (io.ReadCloser, error) { return r.Body(m) })
	})
	if err != nil {
		return st, fmt.Errorf("queue: %w", err)
	}
	return st, tw.Close()
}

// normalize drops what is the engine's own business from a queued message
// (its place in a due index) and writes its times in UTC, so that the same
// queue reads the same from either engine.
func normalize(m *spool.Message) {
	m.Due = time.Time{}
	m.Arrived = m.Arrived.UTC()
	for i := range m.Rcpts {
		if !m.Rcpts[i].NextAttempt.IsZero() {
			m.Rcpts[i].NextAttempt = m.Rcpts[i].NextAttempt.UTC()
		}
	}
}

// copyEntry writes a body of size bytes as one entry.
func copyEntry(tw *tar.Writer, name string, size int64, now time.Time, open func() (io.ReadCloser, error)) error {
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: now}); err != nil {
		return err
	}
	n, err := io.Copy(tw, rc)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("%s: %d bytes where %d were recorded", name, n, size)
	}
	return nil
}

// ErrNotEmpty refuses a restore into a store that holds something.
var ErrNotEmpty = errors.New("the store is not empty: restore only into a new, empty store")

// Restore loads a backup from r into the empty store t.
func Restore(ctx context.Context, r io.Reader, t Target) (Stats, error) {
	var st Stats
	empty, err := t.Empty(ctx)
	if err != nil {
		return st, err
	}
	if !empty {
		return st, ErrNotEmpty
	}
	tr := tar.NewReader(r)
	first := true
	var queued *spool.Message
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, fmt.Errorf("read backup: %w", err)
		}
		name := path.Clean(h.Name)
		if first {
			var hd header
			if name != "relay-snapshot.json" || json.NewDecoder(tr).Decode(&hd) != nil {
				return st, errors.New("not a relay backup (it does not start with relay-snapshot.json)")
			}
			if hd.Format != Format {
				return st, fmt.Errorf("backup format %d is not %d: use the relay version that wrote it", hd.Format, Format)
			}
			first = false
			continue
		}
		dir, base := path.Split(name)
		switch {
		case dir == "settings/":
			v, err := io.ReadAll(tr)
			if err != nil {
				return st, err
			}
			if err := t.RestoreSetting(ctx, base, v); err != nil {
				return st, fmt.Errorf("setting %s: %w", base, err)
			}
			st.Settings++
		case dir == "blobs/":
			if err := t.RestoreBlob(ctx, base, tr); err != nil {
				return st, fmt.Errorf("body %s: %w", base, err)
			}
			st.Blobs++
		case dir == "accounts/":
			var a account
			if err := json.NewDecoder(tr).Decode(&a); err != nil {
				return st, fmt.Errorf("%s: %w", name, err)
			}
			if err := restoreAccount(ctx, t, a, &st); err != nil {
				return st, fmt.Errorf("account %s: %w", a.Address, err)
			}
		case dir == "queue/" && strings.HasSuffix(base, ".json"):
			queued = new(spool.Message)
			if err := json.NewDecoder(tr).Decode(queued); err != nil {
				return st, fmt.Errorf("%s: %w", name, err)
			}
		case dir == "queue/" && strings.HasSuffix(base, ".eml"):
			if queued == nil || queued.ID+".eml" != base {
				return st, fmt.Errorf("%s without its envelope", name)
			}
			if err := t.RestoreQueued(ctx, queued, tr); err != nil {
				return st, fmt.Errorf("queued message %s: %w", queued.ID, err)
			}
			st.Queued++
			queued = nil
		default:
			return st, fmt.Errorf("unknown entry %s in the backup", name)
		}
	}
	if first {
		return st, errors.New("the backup is empty")
	}
	return st, nil
}

func restoreAccount(ctx context.Context, t Target, a account, st *Stats) error {
	acc := mailbox.Account{Address: a.Address, Hash: a.Hash, Created: a.Created}
	if err := t.RestoreAccount(ctx, acc, a.Subscriptions); err != nil {
		return err
	}
	st.Accounts++
	for _, b := range a.Mailboxes {
		msgs := make([]mailbox.Message, len(b.Messages))
		for i, m := range b.Messages {
			msgs[i] = mailbox.Message{UID: m.UID, Blob: m.Blob, Size: m.Size, Date: m.Date, Flags: m.Flags}
		}
		mb := mailbox.Mailbox{User: a.Address, Name: b.Name, SpecialUse: b.SpecialUse, UIDValidity: b.UIDValidity,
			UIDNext: b.UIDNext, FirstRecent: b.FirstRecent}
		if err := t.RestoreMailbox(ctx, a.Address, mb, msgs); err != nil {
			return fmt.Errorf("mailbox %s: %w", b.Name, err)
		}
		st.Mailboxes++
		st.Messages += len(msgs)
	}
	return nil
}

// Check reads a backup to its end without restoring it, and counts what it
// holds: a file cut short or not a backup fails.
func Check(r io.Reader) (Stats, error) {
	var st Stats
	tr := tar.NewReader(r)
	first := true
	for {
		h, err := tr.Next()
		if err == io.EOF {
			if first {
				return st, errors.New("the backup is empty")
			}
			return st, nil
		}
		if err != nil {
			return st, err
		}
		if first && h.Name != "relay-snapshot.json" {
			return st, errors.New("not a relay backup")
		}
		first = false
		dir, base := path.Split(path.Clean(h.Name))
		if dir == "accounts/" {
			var a account
			if err := json.NewDecoder(tr).Decode(&a); err != nil {
				return st, fmt.Errorf("%s: %w", h.Name, err)
			}
			st.Mailboxes += len(a.Mailboxes)
			for _, b := range a.Mailboxes {
				st.Messages += len(b.Messages)
			}
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return st, err
		}
		switch {
		case dir == "settings/":
			st.Settings++
		case dir == "blobs/":
			st.Blobs++
		case dir == "accounts/":
			st.Accounts++
		case dir == "queue/" && strings.HasSuffix(base, ".eml"):
			st.Queued++
		}
	}
}
