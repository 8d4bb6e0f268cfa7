package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/oklog/ulid/v2"

	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

func uniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// CreateAccount implements mailbox.Backend.
func (s *Store) CreateAccount(ctx context.Context, acc mailbox.Account, boxes []mailbox.NewMailbox) error {
	return s.tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO accounts (address, hash, created) VALUES ($1, $2, $3)", acc.Address, acc.Hash, acc.Created)
		if uniqueViolation(err) {
			return fmt.Errorf("%s: %w", acc.Address, mailbox.ErrUserExists)
		}
		if err != nil {
			return err
		}
		for _, b := range boxes {
			if _, err := s.createMailboxTx(ctx, tx, acc.Address, b); err != nil {
				return err
			}
		}
		return nil
	})
}

// Account implements mailbox.Backend.
func (s *Store) Account(ctx context.Context, addr string) (*mailbox.Account, error) {
	acc := &mailbox.Account{}
	err := s.pool.QueryRow(ctx, "SELECT address, hash, created FROM accounts WHERE address = $1", addr).Scan(&acc.Address, &acc.Hash, &acc.Created)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w", addr, mailbox.ErrNoUser)
	}
	if err != nil {
		return nil, mapErr(err)
	}
	return acc, nil
}

// SetPasswordHash implements mailbox.Backend.
func (s *Store) SetPasswordHash(ctx context.Context, addr string, hash []byte) error {
	tag, err := s.pool.Exec(ctx, "UPDATE accounts SET hash = $2 WHERE address = $1", addr, hash)
	if err != nil {
		return mapErr(err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s: %w", addr, mailbox.ErrNoUser)
	}
	return nil
}

// DeleteAccount implements mailbox.Backend. The account row is locked
// first, and deliveries lock the mailbox rows they write, which the
// cascade deletes: a delivery either committed before (and is counted) or
// finds no mailbox.
func (s *Store) DeleteAccount(ctx context.Context, addr string, force bool) error {
	var blobs []string
	err := s.tx(ctx, func(tx pgx.Tx) error {
		blobs = blobs[:0]
		var one int
		if err := tx.QueryRow(ctx, "SELECT 1 FROM accounts WHERE address = $1 FOR UPDATE", addr).Scan(&one); errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%s: %w", addr, mailbox.ErrNoUser)
		} else if err != nil {
			return err
		}
		var n int64
		if err := tx.QueryRow(ctx, "SELECT coalesce(sum(messages), 0) FROM mailboxes WHERE account = $1", addr).Scan(&n); err != nil {
			return err
		}
		if n > 0 && !force {
			return fmt.Errorf("%s holds %d message(s); use --force to delete them too: %w", addr, n, mailbox.ErrHasMail)
		}
		rows, err := tx.Query(ctx, `DELETE FROM messages WHERE mailbox IN (SELECT id FROM mailboxes WHERE account = $1) RETURNING blob`, addr)
		if err != nil {
			return err
		}
		for rows.Next() {
			var b string
			if err := rows.Scan(&b); err != nil {
				rows.Close()
				return err
			}
			blobs = append(blobs, b)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if err := unrefBlobs(ctx, tx, blobs); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "DELETE FROM accounts WHERE address = $1", addr)
		return err
	})
	if err == nil {
		s.Publish(addr, mailbox.Event{})
	}
	return err
}

// unrefBlobs drops one reference for each entry of blobs (a blob may appear
// more than once) and deletes the blobs no message holds any more.
func unrefBlobs(ctx context.Context, tx pgx.Tx, blobs []string) error {
	if len(blobs) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `UPDATE blobs b SET refs = b.refs - c.n
		FROM (SELECT id, count(*) AS n FROM unnest($1::text[]) AS id GROUP BY id) c WHERE b.id = c.id`, blobs)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "DELETE FROM blobs WHERE id = ANY($1) AND refs <= 0", blobs)
	return err
}

// Accounts implements mailbox.Backend.
func (s *Store) Accounts(ctx context.Context) ([]mailbox.UserInfo, error) {
	rows, err := s.pool.Query(ctx, `SELECT a.address, a.created, coalesce(sum(m.messages), 0), coalesce(sum(m.size), 0)
		FROM accounts a LEFT JOIN mailboxes m ON m.account = a.address GROUP BY a.address, a.created ORDER BY a.address`)
	if err != nil {
		return nil, mapErr(err)
	}
	defer rows.Close()
	out := []mailbox.UserInfo{}
	for rows.Next() {
		var u mailbox.UserInfo
		var n int64
		if err := rows.Scan(&u.Address, &u.Created, &n, &u.Size); err != nil {
			return nil, err
		}
		u.Messages = int(n)
		out = append(out, u)
	}
	return out, mapErr(rows.Err())
}

// Setting implements mailbox.Backend.
func (s *Store) Setting(ctx context.Context, name string) ([]byte, error) {
	var v []byte
	err := s.pool.QueryRow(ctx, "SELECT value FROM settings WHERE name = $1", name).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return v, mapErr(err)
}

// PutSetting implements mailbox.Backend.
func (s *Store) PutSetting(ctx context.Context, name string, value []byte) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO settings (name, value) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value`, name, value)
	return mapErr(err)
}

// counter increments a named counter and returns its new value, at least
// atLeast.
func counter(ctx context.Context, tx pgx.Tx, name string, atLeast int64) (int64, error) {
	var v int64
	err := tx.QueryRow(ctx, `INSERT INTO counters (name, value) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET value = greatest(counters.value + 1, $2) RETURNING value`, name, atLeast).Scan(&v)
	return v, err
}

func (s *Store) createMailboxTx(ctx context.Context, tx pgx.Tx, user string, b mailbox.NewMailbox) (*mailbox.Mailbox, error) {
	// UIDVALIDITY: at least the current time and above any given before,
	// so a mailbox made again is never taken for the old one by a cache.
	uv, err := counter(ctx, tx, "uidvalidity", int64(uint32(s.now().Unix())))
	if err != nil {
		return nil, err
	}
	mb := &mailbox.Mailbox{User: user, Name: b.Name, SpecialUse: b.SpecialUse, UIDValidity: uint32(uv), UIDNext: 1, Subscribed: b.Subscribed}
	var id int64
	err = tx.QueryRow(ctx, `INSERT INTO mailboxes (account, name, special_use, uidvalidity) VALUES ($1, $2, $3, $4)
		ON CONFLICT (account, name) DO NOTHING RETURNING id`, user, b.Name, b.SpecialUse, uv).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w", b.Name, mailbox.ErrMailboxExist)
	}
	if err != nil {
		return nil, err
	}
	mb.ID = uint64(id)
	if b.Subscribed {
		if _, err := tx.Exec(ctx, "INSERT INTO subscriptions (account, name) VALUES ($1, $2) ON CONFLICT DO NOTHING", user, b.Name); err != nil {
			return nil, err
		}
	}
	return mb, nil
}

// CreateMailbox implements mailbox.Backend.
func (s *Store) CreateMailbox(ctx context.Context, user string, b mailbox.NewMailbox) (*mailbox.Mailbox, error) {
	var mb *mailbox.Mailbox
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var one int
		if err := tx.QueryRow(ctx, "SELECT 1 FROM accounts WHERE address = $1 FOR SHARE", user).Scan(&one); errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%s: %w", user, mailbox.ErrNoUser)
		} else if err != nil {
			return err
		}
		var err error
		mb, err = s.createMailboxTx(ctx, tx, user, b)
		return err
	})
	return mb, err
}

const mailboxCols = `m.id, m.account, m.name, m.special_use, m.uidvalidity, m.uidnext, m.messages, m.size, m.unseen,
	m.first_recent, EXISTS (SELECT 1 FROM subscriptions s WHERE s.account = m.account AND s.name = m.name)`

func scanMailbox(row pgx.Row) (*mailbox.Mailbox, error) {
	mb := &mailbox.Mailbox{}
	var id, uv, next, n, unseen, recent int64
	err := row.Scan(&id, &mb.User, &mb.Name, &mb.SpecialUse, &uv, &next, &n, &mb.Size, &unseen, &recent, &mb.Subscribed)
	if err != nil {
		return nil, err
	}
	mb.ID, mb.UIDValidity, mb.UIDNext = uint64(id), uint32(uv), uint32(next)
	mb.Messages, mb.Unseen, mb.FirstRecent = uint32(n), uint32(unseen), uint32(recent)
	return mb, nil
}

// Mailbox implements mailbox.Backend.
func (s *Store) Mailbox(ctx context.Context, user, name string) (*mailbox.Mailbox, error) {
	return getMailbox(ctx, s.pool, user, name, "")
}

type rowQueryer interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// getMailbox reads one mailbox; lock is "" or a locking clause.
func getMailbox(ctx context.Context, q rowQueryer, user, name, lock string) (*mailbox.Mailbox, error) {
	mb, err := scanMailbox(q.QueryRow(ctx, "SELECT "+mailboxCols+" FROM mailboxes m WHERE m.account = $1 AND m.name = $2 "+lock, user, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w", name, mailbox.ErrNoMailbox)
	}
	return mb, mapErr(err)
}

// Mailboxes implements mailbox.Backend.
func (s *Store) Mailboxes(ctx context.Context, user string) ([]*mailbox.Mailbox, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+mailboxCols+" FROM mailboxes m WHERE m.account = $1 ORDER BY m.name", user)
	if err != nil {
		return nil, mapErr(err)
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
	return out, mapErr(rows.Err())
}

// DeleteMailbox implements mailbox.Backend.
func (s *Store) DeleteMailbox(ctx context.Context, user, name string) error {
	err := s.tx(ctx, func(tx pgx.Tx) error {
		mb, err := getMailbox(ctx, tx, user, name, "FOR UPDATE OF m")
		if err != nil {
			return err
		}
		blobs, err := deleteMessages(ctx, tx, "DELETE FROM messages WHERE mailbox = $1 RETURNING blob", mb.ID)
		if err != nil {
			return err
		}
		if err := unrefBlobs(ctx, tx, blobs); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "DELETE FROM mailboxes WHERE id = $1", mb.ID)
		return err
	})
	if err == nil {
		s.Publish(user, mailbox.Event{})
	}
	return err
}

func deleteMessages(ctx context.Context, tx pgx.Tx, q string, args ...any) ([]string, error) {
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var blobs []string
	for rows.Next() {
		var b string
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		blobs = append(blobs, b)
	}
	return blobs, rows.Err()
}

// RenameMailbox implements mailbox.Backend.
func (s *Store) RenameMailbox(ctx context.Context, user, old, new string) error {
	return s.tx(ctx, func(tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM mailboxes WHERE account = $1 AND (name = $2 OR starts_with(name, $3))`,
			user, new, new+string(mailbox.Delimiter)).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%s: %w", new, mailbox.ErrMailboxExist)
		}
		tag, err := tx.Exec(ctx, `UPDATE mailboxes SET name = $3 || substr(name, length($2) + 1)
			WHERE account = $1 AND (name = $2 OR starts_with(name, $4))`, user, old, new, old+string(mailbox.Delimiter))
		if err != nil {
			return err
		}
		var found bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM mailboxes WHERE account = $1 AND name = $2)", user, new).Scan(&found); err != nil {
			return err
		}
		if tag.RowsAffected() == 0 || !found {
			return fmt.Errorf("%s: %w", old, mailbox.ErrNoMailbox)
		}
		return nil
	})
}

// Subscriptions implements mailbox.Backend.
func (s *Store) Subscriptions(ctx context.Context, user string) ([]string, error) {
	rows, err := s.pool.Query(ctx, "SELECT name FROM subscriptions WHERE account = $1 ORDER BY name", user)
	if err != nil {
		return nil, mapErr(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return names, mapErr(err)
}

// SetSubscribed implements mailbox.Backend.
func (s *Store) SetSubscribed(ctx context.Context, user, name string, on bool) error {
	q := "DELETE FROM subscriptions WHERE account = $1 AND name = $2"
	if on {
		q = "INSERT INTO subscriptions (account, name) VALUES ($1, $2) ON CONFLICT DO NOTHING"
	}
	_, err := s.pool.Exec(ctx, q, user, name)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23503" {
		return fmt.Errorf("%s: %w", user, mailbox.ErrNoUser)
	}
	return mapErr(err)
}

// insertBlob stores a body as a new blob with refs references.
func insertBlob(ctx context.Context, tx pgx.Tx, body io.Reader, refs int) (string, int64, error) {
	hc := mailbox.NewHeadCapture(body)
	chunks, size, err := readChunks(hc)
	if err != nil {
		return "", 0, err
	}
	id := ulid.Make().String()
	if _, err := tx.Exec(ctx, "INSERT INTO blobs (id, size, head, refs) VALUES ($1, $2, $3, $4)", id, size, hc.Head(size), refs); err != nil {
		return "", 0, err
	}
	for i, c := range chunks {
		if _, err := tx.Exec(ctx, "INSERT INTO blob_chunks (blob, chunk, data) VALUES ($1, $2, $3)", id, i, c); err != nil {
			return "", 0, err
		}
	}
	return id, size, nil
}

// appendSQL adds a message at its mailbox's UIDNEXT in one statement: the
// mailbox row's update (which locks it) hands the UID and MODSEQ to the
// insert.
const appendSQL = `WITH mb AS (
		UPDATE mailboxes SET uidnext = uidnext + 1, messages = messages + 1, size = size + $3,
			unseen = unseen + $6, highest_modseq = highest_modseq + 1
		WHERE id = $1 RETURNING uidnext - 1 AS uid, highest_modseq)
	INSERT INTO messages (mailbox, uid, blob, size, date, flags, modseq)
	SELECT $1, mb.uid, $2, $3, $4, $5, mb.highest_modseq FROM mb RETURNING uid`

func appendArgs(mb *mailbox.Mailbox, blob string, size int64, date time.Time, flags []string) []any {
	unseen := 0
	if !mailbox.HasFlag(flags, mailbox.FlagSeen) {
		unseen = 1
	}
	return []any{int64(mb.ID), blob, size, date.UTC().Truncate(time.Second), nonNil(flags), unseen}
}

// appendTx adds a message holding blob to mailbox mb inside tx.
func appendTx(ctx context.Context, tx pgx.Tx, mb *mailbox.Mailbox, blob string, size int64, date time.Time, flags []string) (uint32, error) {
	var uid int64
	err := tx.QueryRow(ctx, appendSQL, appendArgs(mb, blob, size, date, flags)...).Scan(&uid)
	return uint32(uid), err
}

// Append implements mailbox.Backend.
func (s *Store) Append(ctx context.Context, user, name string, body io.Reader, date time.Time, flags []string) (*mailbox.Mailbox, uint32, error) {
	// The body is read before the transaction, so that a slow client's
	// literal holds no lock.
	hc := mailbox.NewHeadCapture(body)
	chunks, size, err := readChunks(hc)
	if err != nil {
		return nil, 0, err
	}
	var mb *mailbox.Mailbox
	var uid uint32
	err = s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		mb, err = getMailbox(ctx, tx, user, name, "FOR UPDATE OF m")
		if err != nil {
			return err
		}
		id := ulid.Make().String()
		if _, err := tx.Exec(ctx, "INSERT INTO blobs (id, size, head, refs) VALUES ($1, $2, $3, 1)", id, size, hc.Head(size)); err != nil {
			return err
		}
		for i, c := range chunks {
			if _, err := tx.Exec(ctx, "INSERT INTO blob_chunks (blob, chunk, data) VALUES ($1, $2, $3)", id, i, c); err != nil {
				return err
			}
		}
		uid, err = appendTx(ctx, tx, mb, id, size, date, flags)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	mb.UIDNext = uid + 1
	return mb, uid, nil
}

// fileResult is a mailbox change to publish once a filing committed.
type fileResult struct {
	user string
	ev   mailbox.Event
}

// fileTx files queued message m into the INBOX of each account of f: it
// locks the INBOXes inside tx now and adds to b the statements that store
// one blob, copied from the queued body on the server, and one message per
// account.
func (s *Store) fileTx(ctx context.Context, tx pgx.Tx, b *pgx.Batch, m *spool.Message, f *spool.Filing) ([]fileResult, error) {
	if len(f.Accounts) == 0 {
		return nil, nil
	}
	rows, err := tx.Query(ctx, "SELECT "+mailboxCols+` FROM mailboxes m WHERE m.account = ANY($1) AND m.name = 'INBOX'
		ORDER BY m.id FOR UPDATE OF m`, f.Accounts)
	if err != nil {
		return nil, err
	}
	byUser := map[string]*mailbox.Mailbox{}
	for rows.Next() {
		mb, err := scanMailbox(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		byUser[mb.User] = mb
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, acc := range f.Accounts {
		if byUser[acc] == nil {
			return nil, &spool.NoAccountError{Account: acc}
		}
	}
	id := ulid.Make().String()
	b.Queue("INSERT INTO blobs (id, size, head, refs) SELECT $1, size, head, $2 FROM queue WHERE id = $3", id, len(f.Accounts), m.ID)
	b.Queue("INSERT INTO blob_chunks (blob, chunk, data) SELECT $1, chunk, data FROM bodies WHERE queue_id = $2", id, m.ID)
	var out []fileResult
	for _, acc := range f.Accounts {
		mb := byUser[acc]
		b.Queue(appendSQL, appendArgs(mb, id, m.Size, f.Date, nil)...)
		out = append(out, fileResult{user: mb.User, ev: mailbox.Event{}})
	}
	return out, nil
}

// UIDs implements mailbox.Backend.
func (s *Store) UIDs(ctx context.Context, mbox uint64, after uint32) ([]uint32, error) {
	rows, err := s.pool.Query(ctx, "SELECT uid FROM messages WHERE mailbox = $1 AND uid > $2 ORDER BY uid", int64(mbox), int64(after))
	if err != nil {
		return nil, mapErr(err)
	}
	defer rows.Close()
	var uids []uint32
	for rows.Next() {
		var u int64
		if err := rows.Scan(&u); err != nil {
			return nil, err
		}
		uids = append(uids, uint32(u))
	}
	return uids, mapErr(rows.Err())
}

const messageSelect = "SELECT uid, blob, size, date, flags FROM messages"

func scanMessage(row pgx.Row) (mailbox.Message, error) {
	var m mailbox.Message
	var uid int64
	err := row.Scan(&uid, &m.Blob, &m.Size, &m.Date, &m.Flags)
	m.UID = uint32(uid)
	m.Date = m.Date.UTC()
	if len(m.Flags) == 0 {
		m.Flags = nil
	}
	return m, err
}

// Messages implements mailbox.Backend.
func (s *Store) Messages(ctx context.Context, mbox uint64, uids []uint32) ([]mailbox.Message, error) {
	ids := make([]int64, len(uids))
	for i, u := range uids {
		ids[i] = int64(u)
	}
	rows, err := s.pool.Query(ctx, messageSelect+" WHERE mailbox = $1 AND uid = ANY($2)", int64(mbox), ids)
	if err != nil {
		return nil, mapErr(err)
	}
	defer rows.Close()
	byUID := map[uint32]mailbox.Message{}
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			return nil, err
		}
		byUID[m.UID] = m
	}
	if err := rows.Err(); err != nil {
		return nil, mapErr(err)
	}
	out := make([]mailbox.Message, 0, len(byUID))
	for _, u := range uids {
		if m, ok := byUID[u]; ok {
			out = append(out, m)
		}
	}
	return out, nil
}

// ForEachMessage implements mailbox.Backend: the records come from one
// query; header copies are read as asked.
func (s *Store) ForEachMessage(ctx context.Context, mbox uint64, fn func(m mailbox.Message, r mailbox.HeadReader) error) error {
	rows, err := s.pool.Query(ctx, messageSelect+" WHERE mailbox = $1 ORDER BY uid", int64(mbox))
	if err != nil {
		return mapErr(err)
	}
	var ms []mailbox.Message
	for rows.Next() {
		m, err := scanMessage(rows)
		if err != nil {
			rows.Close()
			return err
		}
		ms = append(ms, m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return mapErr(err)
	}
	for _, m := range ms {
		if err := fn(m, s); err != nil {
			return err
		}
	}
	return nil
}

// Open implements mailbox.Backend.
func (s *Store) Open(ctx context.Context, m mailbox.Message) io.ReadCloser {
	return &chunkReader{ctx: ctx, s: s, query: "SELECT data FROM blob_chunks WHERE blob = $1 AND chunk = $2", key: m.Blob}
}

// Head implements mailbox.HeadReader.
func (s *Store) Head(ctx context.Context, m mailbox.Message) ([]byte, bool, error) {
	var head []byte
	err := s.pool.QueryRow(ctx, "SELECT head FROM blobs WHERE id = $1", m.Blob).Scan(&head)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, fmt.Errorf("blob %s: %w", m.Blob, mailbox.ErrNoMailbox)
	}
	if err != nil {
		return nil, false, mapErr(err)
	}
	return head, head != nil, nil
}

// SetFlags implements mailbox.Backend.
func (s *Store) SetFlags(ctx context.Context, user, name string, uids []uint32, op mailbox.FlagOp, flags []string) ([]mailbox.FlagChange, uint64, error) {
	var changes []mailbox.FlagChange
	var mboxID uint64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		changes = changes[:0]
		mb, err := getMailbox(ctx, tx, user, name, "FOR UPDATE OF m")
		if err != nil {
			return err
		}
		mboxID = mb.ID
		ids := make([]int64, len(uids))
		for i, u := range uids {
			ids[i] = int64(u)
		}
		rows, err := tx.Query(ctx, "SELECT uid, flags FROM messages WHERE mailbox = $1 AND uid = ANY($2) ORDER BY uid", int64(mb.ID), ids)
		if err != nil {
			return err
		}
		type change struct {
			uid        int64
			flags      []string
			seenBefore bool
		}
		var cs []change
		for rows.Next() {
			var c change
			var cur []string
			if err := rows.Scan(&c.uid, &cur); err != nil {
				rows.Close()
				return err
			}
			c.seenBefore = mailbox.HasFlag(cur, mailbox.FlagSeen)
			c.flags = mailbox.ApplyFlags(cur, op, flags)
			cs = append(cs, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		unseen := 0
		for _, c := range cs {
			switch seen := mailbox.HasFlag(c.flags, mailbox.FlagSeen); {
			case c.seenBefore && !seen:
				unseen++
			case !c.seenBefore && seen:
				unseen--
			}
		}
		var modseq int64
		if err := tx.QueryRow(ctx, "UPDATE mailboxes SET unseen = unseen + $2, highest_modseq = highest_modseq + 1 WHERE id = $1 RETURNING highest_modseq",
			int64(mb.ID), unseen).Scan(&modseq); err != nil {
			return err
		}
		for _, c := range cs {
			if _, err := tx.Exec(ctx, "UPDATE messages SET flags = $3, modseq = $4 WHERE mailbox = $1 AND uid = $2",
				int64(mb.ID), c.uid, nonNil(c.flags), modseq); err != nil {
				return err
			}
			changes = append(changes, mailbox.FlagChange{UID: uint32(c.uid), Flags: c.flags})
		}
		return nil
	})
	return changes, mboxID, err
}

// Remove implements mailbox.Backend.
func (s *Store) Remove(ctx context.Context, user, name string, uids []uint32, deletedOnly bool) ([]uint32, uint64, error) {
	var gone []uint32
	var mboxID uint64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		gone, mboxID, err = removeTx(ctx, tx, user, name, uids, deletedOnly)
		return err
	})
	return gone, mboxID, err
}

func removeTx(ctx context.Context, tx pgx.Tx, user, name string, uids []uint32, deletedOnly bool) ([]uint32, uint64, error) {
	mb, err := getMailbox(ctx, tx, user, name, "FOR UPDATE OF m")
	if err != nil {
		return nil, 0, err
	}
	ids := make([]int64, len(uids))
	for i, u := range uids {
		ids[i] = int64(u)
	}
	q := "DELETE FROM messages WHERE mailbox = $1 AND uid = ANY($2)"
	if deletedOnly {
		q += ` AND '\Deleted' = ANY(flags)`
	}
	rows, err := tx.Query(ctx, q+" RETURNING uid, blob, size, '\\Seen' = ANY(flags)", int64(mb.ID), ids)
	if err != nil {
		return nil, mb.ID, err
	}
	var gone []uint32
	var blobs []string
	var size int64
	unseen := 0
	for rows.Next() {
		var uid, sz int64
		var blob string
		var seen bool
		if err := rows.Scan(&uid, &blob, &sz, &seen); err != nil {
			rows.Close()
			return nil, mb.ID, err
		}
		gone = append(gone, uint32(uid))
		blobs = append(blobs, blob)
		size += sz
		if !seen {
			unseen++
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, mb.ID, err
	}
	if len(gone) == 0 {
		return nil, mb.ID, nil
	}
	if _, err := tx.Exec(ctx, `UPDATE mailboxes SET messages = messages - $2, size = size - $3, unseen = unseen - $4,
		highest_modseq = highest_modseq + 1 WHERE id = $1`, int64(mb.ID), len(gone), size, unseen); err != nil {
		return nil, mb.ID, err
	}
	if err := unrefBlobs(ctx, tx, blobs); err != nil {
		return nil, mb.ID, err
	}
	sortUIDs(gone)
	return gone, mb.ID, nil
}

func sortUIDs(u []uint32) {
	for i := 1; i < len(u); i++ {
		for j := i; j > 0 && u[j] < u[j-1]; j-- {
			u[j], u[j-1] = u[j-1], u[j]
		}
	}
}

// Copy implements mailbox.Backend.
func (s *Store) Copy(ctx context.Context, user, src, dst string, uids []uint32, move bool) (mailbox.CopyResult, error) {
	var res mailbox.CopyResult
	err := s.tx(ctx, func(tx pgx.Tx) error {
		res = mailbox.CopyResult{}
		// Both rows are locked in ID order, so that two copies in
		// opposite directions cannot deadlock.
		from, err := getMailbox(ctx, tx, user, src, "")
		if err != nil {
			return err
		}
		to, err := getMailbox(ctx, tx, user, dst, "")
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SELECT 1 FROM mailboxes WHERE id = ANY($1) ORDER BY id FOR UPDATE",
			[]int64{int64(from.ID), int64(to.ID)}); err != nil {
			return err
		}
		res.UIDValidity, res.SrcID, res.DstID = to.UIDValidity, from.ID, to.ID
		ids := make([]int64, len(uids))
		for i, u := range uids {
			ids[i] = int64(u)
		}
		rows, err := tx.Query(ctx, messageSelect+" WHERE mailbox = $1 AND uid = ANY($2)", int64(from.ID), ids)
		if err != nil {
			return err
		}
		byUID := map[uint32]mailbox.Message{}
		for rows.Next() {
			m, err := scanMessage(rows)
			if err != nil {
				rows.Close()
				return err
			}
			byUID[m.UID] = m
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var blobs []string
		for _, u := range uids {
			m, ok := byUID[u]
			if !ok {
				continue
			}
			delete(byUID, u)
			newUID, err := appendTx(ctx, tx, to, m.Blob, m.Size, m.Date, m.Flags)
			if err != nil {
				return err
			}
			blobs = append(blobs, m.Blob)
			res.SrcUIDs = append(res.SrcUIDs, u)
			res.DstUIDs = append(res.DstUIDs, newUID)
		}
		if _, err := tx.Exec(ctx, `UPDATE blobs b SET refs = b.refs + c.n
			FROM (SELECT id, count(*) AS n FROM unnest($1::text[]) AS id GROUP BY id) c WHERE b.id = c.id`, blobs); err != nil {
			return err
		}
		if move && len(res.SrcUIDs) > 0 {
			if _, _, err := removeTx(ctx, tx, user, src, res.SrcUIDs, false); err != nil {
				return err
			}
		}
		return nil
	})
	return res, err
}

// ClaimRecent implements mailbox.Backend.
func (s *Store) ClaimRecent(ctx context.Context, user, name string) (first, next uint32, err error) {
	err = s.tx(ctx, func(tx pgx.Tx) error {
		mb, err := getMailbox(ctx, tx, user, name, "FOR UPDATE OF m")
		if err != nil {
			return err
		}
		first, next = max(mb.FirstRecent, 1), mb.UIDNext
		if first >= next {
			return nil
		}
		_, err = tx.Exec(ctx, "UPDATE mailboxes SET first_recent = $2 WHERE id = $1", int64(mb.ID), int64(next))
		return err
	})
	return first, next, err
}
