package badger

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	bdg "github.com/dgraph-io/badger/v4"

	"github.com/relaymail/relay/internal/store/snapshot"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// Snapshot implements snapshot.Source: every read goes through one read
// transaction, which sees the database as it was when it began.
func (s *Store) Snapshot(_ context.Context, fn func(snapshot.Reader) error) error {
	txn := s.db.NewTransaction(false)
	defer txn.Discard()
	return fn(&snapReader{s: s, txn: txn})
}

type snapReader struct {
	s   *Store
	txn *bdg.Txn
}

func (r *snapReader) each(prefix []byte, fn func(item *bdg.Item) error) error {
	it := r.txn.NewIterator(bdg.IteratorOptions{Prefix: prefix})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		if err := fn(it.Item()); err != nil {
			return err
		}
	}
	return nil
}

func (r *snapReader) Settings(fn func(name string, value []byte) error) error {
	return r.each([]byte(prefixSetting), func(item *bdg.Item) error {
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		return fn(string(item.Key()[len(prefixSetting):]), v)
	})
}

func (r *snapReader) Accounts(fn func(acc mailbox.Account) error) error {
	return r.each([]byte(prefixUser), func(item *bdg.Item) error {
		var acc mailbox.Account
		if err := item.Value(func(b []byte) error { return json.Unmarshal(b, &acc) }); err != nil {
			return err
		}
		return fn(acc)
	})
}

func (r *snapReader) Subscriptions(user string) ([]string, error) {
	var names []string
	p := []byte(prefixSub + user + "\x00")
	err := r.each(p, func(item *bdg.Item) error {
		names = append(names, string(item.Key()[len(p):]))
		return nil
	})
	if err != nil {
		return nil, err
	}
	mbs, err := mailboxesTxn(r.txn, user)
	if err != nil {
		return nil, err
	}
	for _, mb := range mbs {
		if mb.Subscribed && !slices.Contains(names, mb.Name) {
			names = append(names, mb.Name)
		}
	}
	slices.Sort(names)
	return names, nil
}

func (r *snapReader) Mailboxes(user string) ([]*mailbox.Mailbox, error) {
	return mailboxesTxn(r.txn, user)
}

func (r *snapReader) Messages(mbox uint64, fn func(m mailbox.Message) error) error {
	return r.each(msgPrefix(mbox), func(item *bdg.Item) error {
		m, err := readMsg(item)
		if err != nil {
			return err
		}
		return fn(m)
	})
}

func (r *snapReader) Blob(m mailbox.Message) (io.ReadCloser, error) {
	return io.NopCloser(ChunkReader(nil, r.txn, []byte(prefixBlob+m.Blob), m.Size)), nil
}

func (r *snapReader) Queue(fn func(m *spool.Message) error) error {
	return r.each([]byte(prefixEnv), func(item *bdg.Item) error {
		m := new(spool.Message)
		if err := item.Value(func(v []byte) error { return parseEnvelope(v, m) }); err != nil {
			return err
		}
		return fn(m)
	})
}

func (r *snapReader) Body(m *spool.Message) (io.ReadCloser, error) {
	return io.NopCloser(ChunkReader(nil, r.txn, bodyPrefix(m.ID), m.Size)), nil
}

// Empty implements snapshot.Target.
func (s *Store) Empty(context.Context) (bool, error) {
	empty := true
	err := s.view(func(txn *bdg.Txn) error {
		for _, p := range []string{prefixUser, prefixEnv, prefixMsg} {
			it := txn.NewIterator(bdg.IteratorOptions{Prefix: []byte(p)})
			it.Rewind()
			if it.Valid() {
				empty = false
			}
			it.Close()
		}
		return nil
	})
	return empty, err
}

// RestoreSetting implements snapshot.Target.
func (s *Store) RestoreSetting(ctx context.Context, name string, value []byte) error {
	return s.PutSetting(ctx, name, value)
}

// RestoreBlob implements snapshot.Target.
func (s *Store) RestoreBlob(ctx context.Context, id string, body io.Reader) error {
	data, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	return s.update(ctx, func(txn *bdg.Txn) error {
		_, err := putBlobTxn(txn, id, bytes.NewReader(data), 0)
		return err
	})
}

// RestoreAccount implements snapshot.Target.
func (s *Store) RestoreAccount(ctx context.Context, acc mailbox.Account, subs []string) error {
	return s.update(ctx, func(txn *bdg.Txn) error {
		if ok, err := exists(txn, userKey(acc.Address)); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("%s: %w", acc.Address, mailbox.ErrUserExists)
		}
		if err := putJSON(txn, userKey(acc.Address), acc); err != nil {
			return err
		}
		for _, n := range subs {
			if err := txn.Set(subKey(acc.Address, n), nil); err != nil {
				return err
			}
		}
		return nil
	})
}

// restoreBatch bounds the messages one transaction of a restore writes.
const restoreBatch = 2000

// RestoreMailbox implements snapshot.Target.
func (s *Store) RestoreMailbox(ctx context.Context, user string, mb mailbox.Mailbox, msgs []mailbox.Message) error {
	var id uint64
	err := s.update(ctx, func(txn *bdg.Txn) error {
		if ok, err := exists(txn, mailboxKey(user, mb.Name)); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("%s: %w", mb.Name, mailbox.ErrMailboxExist)
		}
		var err error
		if id, err = counter(txn, keySeqMailbox, 1); err != nil {
			return err
		}
		// Later mailboxes get a UIDVALIDITY above every restored one.
		if err := atLeast(txn, keySeqUIDV, uint64(mb.UIDValidity)); err != nil {
			return err
		}
		rec := mailbox.Mailbox{ID: id, User: user, Name: mb.Name, SpecialUse: mb.SpecialUse, UIDValidity: mb.UIDValidity,
			UIDNext: mb.UIDNext, FirstRecent: mb.FirstRecent}
		return putMailbox(txn, &rec)
	})
	if err != nil {
		return err
	}
	for lo := 0; lo < len(msgs); lo += restoreBatch {
		part := msgs[lo:min(lo+restoreBatch, len(msgs))]
		err := s.update(ctx, func(txn *bdg.Txn) error {
			rec, err := getMailboxTxn(txn, user, mb.Name)
			if err != nil {
				return err
			}
			for _, m := range part {
				if m.UID >= rec.UIDNext {
					return fmt.Errorf("UID %d is not below UIDNEXT %d", m.UID, rec.UIDNext)
				}
				if err := refBlob(txn, m.Blob); err != nil {
					return err
				}
				m.Date = m.Date.UTC().Truncate(time.Second)
				if err := putMsg(txn, msgKey(rec.ID, m.UID), m); err != nil {
					return err
				}
				rec.Messages++
				rec.Size += m.Size
				if !mailbox.HasFlag(m.Flags, mailbox.FlagSeen) {
					rec.Unseen++
				}
			}
			rec.Subscribed = false
			return putMailbox(txn, rec)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// atLeast raises the counter at key to n if it is below.
func atLeast(txn *bdg.Txn, key string, n uint64) error {
	item, err := txn.Get([]byte(key))
	var cur uint64
	switch {
	case errors.Is(err, bdg.ErrKeyNotFound):
	case err != nil:
		return err
	default:
		if err := item.Value(func(b []byte) error {
			if len(b) == 8 {
				cur = binary.BigEndian.Uint64(b)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	if cur >= n {
		return nil
	}
	return txn.Set([]byte(key), binary.BigEndian.AppendUint64(nil, n))
}

// RestoreQueued implements snapshot.Target.
func (s *Store) RestoreQueued(ctx context.Context, m *spool.Message, body io.Reader) error {
	m.Due = time.Time{}
	if strings.TrimSpace(m.ID) == "" {
		return errors.New("queued message without ID")
	}
	return s.Enqueue(ctx, m, body, spool.Event{})
}

var (
	_ snapshot.Source = (*Store)(nil)
	_ snapshot.Target = (*Store)(nil)
)
