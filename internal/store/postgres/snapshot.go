package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaymail/relay/internal/store/snapshot"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// Snapshot implements snapshot.Source: every read goes through one
// read-only transaction at REPEATABLE READ, which sees the database as it
// was at its first query, whatever other nodes commit meanwhile.
func (s *Store) Snapshot(ctx context.Context, fn func(snapshot.Reader) error) error {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return mapErr(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	return fn(&snapReader{ctx: ctx, tx: tx})
}

type snapReader struct {
	ctx context.Context
	tx  pgx.Tx
}

func (r *snapReader) Settings(fn func(name string, value []byte) error) error {
	rows, err := r.tx.Query(r.ctx, "SELECT name, value FROM settings ORDER BY name")
	if err != nil {
		return err
	}
	type kv struct {
		name  string
		value []byte
	}
	all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (kv, error) {
		var x kv
		return x, row.Scan(&x.name, &x.value)
	})
	if err != nil {
		return err
	}
	for _, x := range all {
		if err := fn(x.name, x.value); err != nil {
			return err
		}
	}
	return nil
}

func (r *snapReader) Accounts(fn func(acc mailbox.Account) error) error {
	rows, err := r.tx.Query(r.ctx, "SELECT address, hash, created FROM accounts ORDER BY address")
	if err != nil {
		return err
	}
	accs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (mailbox.Account, error) {
		var a mailbox.Account
		return a, row.Scan(&a.Address, &a.Hash, &a.Created)
	})
	if err != nil {
		return err
	}
	for _, a := range accs {
		if err := fn(a); err != nil {
			return err
		}
	}
	return nil
}

func (r *snapReader) Subscriptions(user string) ([]string, error) {
	rows, err := r.tx.Query(r.ctx, "SELECT name FROM subscriptions WHERE account = $1 ORDER BY name", user)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func (r *snapReader) Mailboxes(user string) ([]*mailbox.Mailbox, error) {
	rows, err := r.tx.Query(r.ctx, "SELECT "+mailboxCols+" FROM mailboxes m WHERE m.account = $1 ORDER BY m.name", user)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*mailbox.Mailbox
	for rows.Next() {
		mb, err := scanMailbox(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, mb)
	}
	return out, rows.Err()
}

func (r *snapReader) Messages(mbox uint64, fn func(m mailbox.Message) error) error {
	rows, err := r.tx.Query(r.ctx, messageSelect+" WHERE mailbox = $1 ORDER BY uid", int64(mbox))
	if err != nil {
		return err
	}
	ms, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (mailbox.Message, error) { return scanMessage(row) })
	if err != nil {
		return err
	}
	for _, m := range ms {
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
}

// txChunks reads a chunked value a row at a time inside the snapshot.
type txChunks struct {
	ctx   context.Context
	tx    pgx.Tx
	query string
	key   string
	next  int
	cur   []byte
	done  bool
}

func (c *txChunks) Read(p []byte) (int, error) {
	for len(c.cur) == 0 {
		if c.done {
			return 0, io.EOF
		}
		err := c.tx.QueryRow(c.ctx, c.query, c.key, c.next).Scan(&c.cur)
		if errors.Is(err, pgx.ErrNoRows) {
			c.done = true
			return 0, io.EOF
		}
		if err != nil {
			return 0, err
		}
		c.next++
	}
	n := copy(p, c.cur)
	c.cur = c.cur[n:]
	return n, nil
}

func (c *txChunks) Close() error { return nil }

func (r *snapReader) Blob(m mailbox.Message) (io.ReadCloser, error) {
	return &txChunks{ctx: r.ctx, tx: r.tx, query: "SELECT data FROM blob_chunks WHERE blob = $1 AND chunk = $2", key: m.Blob}, nil
}

func (r *snapReader) Queue(fn func(m *spool.Message) error) error {
	after := ""
	for {
		page, err := loadMessages(r.ctx, r.tx, "SELECT "+messageCols+" FROM queue WHERE id > $1 ORDER BY id LIMIT 500", after)
		if err != nil || len(page) == 0 {
			return err
		}
		for _, m := range page {
			if err := fn(m); err != nil {
				return err
			}
		}
		after = page[len(page)-1].ID
	}
}

func (r *snapReader) Body(m *spool.Message) (io.ReadCloser, error) {
	return &txChunks{ctx: r.ctx, tx: r.tx, query: "SELECT data FROM bodies WHERE queue_id = $1 AND chunk = $2", key: m.ID}, nil
}

// Empty implements snapshot.Target.
func (s *Store) Empty(ctx context.Context) (bool, error) {
	var any bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM accounts) OR EXISTS (SELECT 1 FROM queue)
		OR EXISTS (SELECT 1 FROM messages)`).Scan(&any)
	return !any, mapErr(err)
}

// RestoreSetting implements snapshot.Target.
func (s *Store) RestoreSetting(ctx context.Context, name string, value []byte) error {
	return s.PutSetting(ctx, name, value)
}

// RestoreBlob implements snapshot.Target.
func (s *Store) RestoreBlob(ctx context.Context, id string, body io.Reader) error {
	hc := mailbox.NewHeadCapture(body)
	chunks, size, err := readChunks(hc)
	if err != nil {
		return err
	}
	return s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO blobs (id, size, head, refs) VALUES ($1, $2, $3, 0)", id, size, hc.Head(size)); err != nil {
			return err
		}
		for i, c := range chunks {
			if _, err := tx.Exec(ctx, "INSERT INTO blob_chunks (blob, chunk, data) VALUES ($1, $2, $3)", id, i, c); err != nil {
				return err
			}
		}
		return nil
	})
}

// RestoreAccount implements snapshot.Target.
func (s *Store) RestoreAccount(ctx context.Context, acc mailbox.Account, subs []string) error {
	return s.tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO accounts (address, hash, created) VALUES ($1, $2, $3)", acc.Address, acc.Hash, acc.Created)
		if uniqueViolation(err) {
			return fmt.Errorf("%s: %w", acc.Address, mailbox.ErrUserExists)
		}
		if err != nil {
			return err
		}
		for _, n := range subs {
			if _, err := tx.Exec(ctx, "INSERT INTO subscriptions (account, name) VALUES ($1, $2)", acc.Address, n); err != nil {
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
	var id int64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		// Later mailboxes get a UIDVALIDITY above every restored one.
		if _, err := tx.Exec(ctx, `INSERT INTO counters (name, value) VALUES ('uidvalidity', $1)
			ON CONFLICT (name) DO UPDATE SET value = greatest(counters.value, $1)`, int64(mb.UIDValidity)); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, `INSERT INTO mailboxes (account, name, special_use, uidvalidity, uidnext, first_recent)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
			user, mb.Name, mb.SpecialUse, int64(mb.UIDValidity), int64(mb.UIDNext), int64(mb.FirstRecent)).Scan(&id)
		if uniqueViolation(err) {
			return fmt.Errorf("%s: %w", mb.Name, mailbox.ErrMailboxExist)
		}
		return err
	})
	if err != nil {
		return err
	}
	for lo := 0; lo < len(msgs); lo += restoreBatch {
		part := msgs[lo:min(lo+restoreBatch, len(msgs))]
		err := s.tx(ctx, func(tx pgx.Tx) error {
			var size int64
			unseen := 0
			blobs := make([]string, 0, len(part))
			for _, m := range part {
				if m.UID >= mb.UIDNext {
					return fmt.Errorf("UID %d is not below UIDNEXT %d", m.UID, mb.UIDNext)
				}
				_, err := tx.Exec(ctx, `INSERT INTO messages (mailbox, uid, blob, size, date, flags) VALUES ($1, $2, $3, $4, $5, $6)`,
					id, int64(m.UID), m.Blob, m.Size, m.Date.UTC().Truncate(time.Second), nonNil(m.Flags))
				if err != nil {
					return err
				}
				size += m.Size
				if !mailbox.HasFlag(m.Flags, mailbox.FlagSeen) {
					unseen++
				}
				blobs = append(blobs, m.Blob)
			}
			if _, err := tx.Exec(ctx, `UPDATE blobs b SET refs = b.refs + c.n
				FROM (SELECT id, count(*) AS n FROM unnest($1::text[]) AS id GROUP BY id) c WHERE b.id = c.id`, blobs); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "UPDATE mailboxes SET messages = messages + $2, size = size + $3, unseen = unseen + $4 WHERE id = $1",
				id, len(part), size, unseen)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// RestoreQueued implements snapshot.Target.
func (s *Store) RestoreQueued(ctx context.Context, m *spool.Message, body io.Reader) error {
	m.Due = time.Time{}
	return s.Enqueue(ctx, m, body, spool.Event{})
}

var (
	_ snapshot.Source = (*Store)(nil)
	_ snapshot.Target = (*Store)(nil)
)
