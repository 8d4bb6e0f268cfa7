package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaymail/relay/internal/store"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// bodyChunk is the size of the pieces a body is stored in: large enough that
// a 50 MiB message is 50 rows, small enough that no single value strains
// the server's memory.
const bodyChunk = 1 << 20

// Enqueue implements spool.Backend. The commit is synchronous, so the
// message is durable when it returns.
func (s *Store) Enqueue(ctx context.Context, m *spool.Message, body io.Reader, ev spool.Event) error {
	chunks, size, err := readChunks(body)
	if err != nil {
		return fmt.Errorf("enqueue %s: body: %w", m.ID, err)
	}
	m.Size = size
	if ev.Event == spool.EventAccepted {
		ev.Size = size
	}
	// One round trip: the statements of a batch run as one implicit
	// transaction, committed (synchronously) after the last.
	b := &pgx.Batch{}
	if err := queueMessage(b, m, chunks); err != nil {
		return err
	}
	if ev.Event != "" {
		if err := queueEvents(b, ev); err != nil {
			return err
		}
	}
	err = store.Retry(ctx, func() error {
		if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
			return mapErr(fmt.Errorf("enqueue %s: %w", m.ID, err))
		}
		return nil
	})
	if err == nil {
		s.changed(true, true)
	}
	return err
}

// readChunks reads a whole body and cuts it into bodyChunk pieces. The
// body is held in memory until the commit, as in any single-statement
// insert; its size is bounded by max-message-size. It is read into one
// buffer that grows as needed (a 4 KiB message takes a few KiB, not a
// chunk's 1 MiB), and the pieces share it.
func readChunks(r io.Reader) ([][]byte, int64, error) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r); err != nil {
		return nil, 0, err
	}
	return splitChunks(buf.Bytes()), int64(buf.Len()), nil
}

// queueMessage adds the statements that store m, its recipients and its
// body to b.
func queueMessage(b *pgx.Batch, m *spool.Message, chunks [][]byte) error {
	params, err := json.Marshal(m.Params)
	if err != nil {
		return err
	}
	var head []byte
	if len(chunks) > 0 {
		hc := mailbox.NewHeadCapture(bytes.NewReader(chunks[0]))
		io.Copy(io.Discard, hc)
		head = hc.Head(m.Size)
	}
	b.Queue(`INSERT INTO queue (id, arrived, client_ip, helo, sender, params, size, head, hold, due)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		m.ID, m.Arrived, m.ClientIP, m.Helo, m.From, params, m.Size, head, m.Hold, nullTime(m.NextDue()))
	for i := range m.Rcpts {
		r := &m.Rcpts[i]
		reply, err := json.Marshal(r.Reply)
		if err != nil {
			return err
		}
		b.Queue(`INSERT INTO recipients (queue_id, idx, address, notify, orcpt, state, attempts,
				next_attempt, last_reply, remote_mta, delay_notified)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
			m.ID, i, r.Address, nonNil(r.Notify), r.ORcpt, string(r.State), r.Attempts, nullTime(r.NextAttempt),
			reply, r.RemoteMTA, r.DelayNotified)
	}
	for i, c := range chunks {
		b.Queue("INSERT INTO bodies (queue_id, chunk, data) VALUES ($1, $2, $3)", m.ID, i, c)
	}
	return nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

const messageCols = `id, arrived, client_ip, helo, sender, params, size, hold`

// withRecipients selects a message's recipients as one JSON array, so that
// a message with its recipients is one query.
const withRecipients = `, (SELECT json_agg(json_build_array(address, notify, orcpt, state, attempts, next_attempt,
	last_reply, remote_mta, delay_notified) ORDER BY idx) FROM recipients r WHERE r.queue_id = q.id)`

// recipientsJSON decodes what withRecipients selects into m.
func recipientsJSON(b []byte, m *spool.Message) error {
	var rows [][]json.RawMessage
	if err := json.Unmarshal(b, &rows); err != nil {
		return fmt.Errorf("decode the recipients of %s: %w", m.ID, err)
	}
	m.Rcpts = make([]spool.Recipient, len(rows))
	for i, row := range rows {
		if len(row) != 9 {
			return fmt.Errorf("decode the recipients of %s: %d fields", m.ID, len(row))
		}
		r := &m.Rcpts[i]
		var state string
		var next *time.Time
		for k, dst := range []any{&r.Address, &r.Notify, &r.ORcpt, &state, &r.Attempts, &next, &r.Reply, &r.RemoteMTA, &r.DelayNotified} {
			if string(row[k]) == "null" {
				continue
			}
			if err := json.Unmarshal(row[k], dst); err != nil {
				return fmt.Errorf("decode the recipients of %s: %w", m.ID, err)
			}
		}
		r.State = spool.State(state)
		if next != nil {
			r.NextAttempt = next.In(time.Local)
		}
		if len(r.Notify) == 0 {
			r.Notify = nil
		}
	}
	return nil
}

type queryer interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// loadMessages reads the messages that query selects (messageCols) with
// their recipients, in the query's order.
func loadMessages(ctx context.Context, q queryer, query string, args ...any) ([]*spool.Message, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	var ms []*spool.Message
	byID := map[string]*spool.Message{}
	ids := []string{}
	for rows.Next() {
		m := new(spool.Message)
		var params []byte
		if err := rows.Scan(&m.ID, &m.Arrived, &m.ClientIP, &m.Helo, &m.From, &params, &m.Size, &m.Hold); err != nil {
			rows.Close()
			return nil, err
		}
		if err := json.Unmarshal(params, &m.Params); err != nil {
			rows.Close()
			return nil, fmt.Errorf("decode %s: %w", m.ID, err)
		}
		ms = append(ms, m)
		byID[m.ID] = m
		ids = append(ids, m.ID)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return ms, nil
	}
	if err := loadRecipients(ctx, q, ids, byID); err != nil {
		return nil, err
	}
	for _, m := range ms {
		m.Arrived = m.Arrived.In(time.Local)
	}
	return ms, nil
}

// loadRecipients reads the recipients of the messages ids into byID.
func loadRecipients(ctx context.Context, q queryer, ids []string, byID map[string]*spool.Message) error {
	rows, err := q.Query(ctx, `SELECT queue_id, address, notify, orcpt, state, attempts, next_attempt, last_reply,
			remote_mta, delay_notified
		FROM recipients WHERE queue_id = ANY($1) ORDER BY queue_id, idx`, ids)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, state string
		var r spool.Recipient
		var next *time.Time
		var reply []byte
		if err := rows.Scan(&id, &r.Address, &r.Notify, &r.ORcpt, &state, &r.Attempts, &next, &reply,
			&r.RemoteMTA, &r.DelayNotified); err != nil {
			return err
		}
		r.State = spool.State(state)
		if next != nil {
			r.NextAttempt = next.In(time.Local)
		}
		if len(r.Notify) == 0 {
			r.Notify = nil
		}
		if len(reply) > 0 {
			if err := json.Unmarshal(reply, &r.Reply); err != nil {
				return fmt.Errorf("decode %s: %w", id, err)
			}
		}
		m := byID[id]
		m.Rcpts = append(m.Rcpts, r)
	}
	return rows.Err()
}

// Get implements spool.Backend.
func (s *Store) Get(ctx context.Context, id string) (*spool.Message, error) {
	m := new(spool.Message)
	var params, rcpts []byte
	err := s.pool.QueryRow(ctx, "SELECT "+messageCols+withRecipients+" FROM queue q WHERE id = $1", id).
		Scan(&m.ID, &m.Arrived, &m.ClientIP, &m.Helo, &m.From, &params, &m.Size, &m.Hold, &rcpts)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w", id, spool.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", id, mapErr(err))
	}
	if err := json.Unmarshal(params, &m.Params); err != nil {
		return nil, fmt.Errorf("decode %s: %w", id, err)
	}
	m.Arrived = m.Arrived.In(time.Local)
	return m, recipientsJSON(rcpts, m)
}

// Page implements spool.Backend.
func (s *Store) Page(ctx context.Context, after string, limit int) ([]*spool.Message, error) {
	ms, err := loadMessages(ctx, s.pool, "SELECT "+messageCols+" FROM queue WHERE id > $1 ORDER BY id LIMIT $2", after, limit)
	return ms, mapErr(err)
}

// Count implements spool.Backend.
func (s *Store) Count(ctx context.Context) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, "SELECT count(*) FROM queue").Scan(&n)
	return n, mapErr(err)
}

// Oldest implements spool.Backend.
func (s *Store) Oldest(ctx context.Context) (time.Time, error) {
	var t *time.Time
	err := s.pool.QueryRow(ctx, "SELECT min(arrived) FROM queue").Scan(&t)
	if err != nil || t == nil {
		return time.Time{}, mapErr(err)
	}
	return *t, nil
}

// NextDue implements spool.Backend.
func (s *Store) NextDue(ctx context.Context) (time.Time, bool, error) {
	var t *time.Time
	err := s.pool.QueryRow(ctx, "SELECT min(due) FROM queue WHERE due IS NOT NULL").Scan(&t)
	if err != nil || t == nil {
		return time.Time{}, false, mapErr(err)
	}
	return *t, true, nil
}

// Body implements spool.Backend: the chunks are read one query at a time,
// so a large body is never held whole.
func (s *Store) Body(ctx context.Context, id string) (io.ReadCloser, error) {
	var exists bool
	if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM queue WHERE id = $1)", id).Scan(&exists); err != nil {
		return nil, mapErr(err)
	}
	if !exists {
		return nil, fmt.Errorf("%s: %w", id, spool.ErrNotFound)
	}
	return &chunkReader{ctx: ctx, s: s, query: "SELECT data FROM bodies WHERE queue_id = $1 AND chunk = $2", key: id}, nil
}

// chunkReader reads a chunked value (a queued body or a blob) a row at a
// time.
type chunkReader struct {
	ctx   context.Context
	s     *Store
	query string
	key   string
	next  int
	cur   []byte
	done  bool
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.done {
			return 0, io.EOF
		}
		err := r.s.pool.QueryRow(r.ctx, r.query, r.key, r.next).Scan(&r.cur)
		if errors.Is(err, pgx.ErrNoRows) {
			r.done = true
			return 0, io.EOF
		}
		if err != nil {
			return 0, fmt.Errorf("read chunk %d of %s: %w", r.next, r.key, mapErr(err))
		}
		r.next++
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

func (r *chunkReader) Close() error { return nil }

// Claim implements spool.Backend: due, free messages are locked with SKIP
// LOCKED (two claimers never wait on or take the same row), their epoch
// incremented and their due time moved to the lease's end, which takes them
// out of every other claimer's scan until then.
func (s *Store) Claim(ctx context.Context, now time.Time, limit int, d time.Duration) ([]spool.Lease, error) {
	until := now.Add(d)
	var leases []spool.Lease
	// One statement, committed on its own: the rows are locked, skipped by
	// every concurrent claimer, and leased in one round trip.
	err := store.Retry(ctx, func() error {
		leases = leases[:0]
		rows, err := s.pool.Query(ctx, `UPDATE queue SET lease_node = $1, lease_epoch = lease_epoch + 1, lease_until = $2, due = $2
			WHERE id IN (SELECT id FROM queue WHERE due <= $3 ORDER BY due LIMIT $4 FOR UPDATE SKIP LOCKED)
			RETURNING id, lease_epoch`, s.node, until, now, limit)
		if err != nil {
			return mapErr(err)
		}
		defer rows.Close()
		for rows.Next() {
			l := spool.Lease{Node: s.node, Until: until}
			var epoch int64
			if err := rows.Scan(&l.ID, &epoch); err != nil {
				return mapErr(err)
			}
			l.Epoch = uint64(epoch)
			leases = append(leases, l)
		}
		return mapErr(rows.Err())
	})
	return leases, err
}

// Renew implements spool.Backend.
func (s *Store) Renew(ctx context.Context, l spool.Lease, d time.Duration) error {
	until := s.now().Add(d)
	tag, err := s.pool.Exec(ctx, `UPDATE queue SET lease_until = $1, due = $1
		WHERE id = $2 AND lease_node = $3 AND lease_epoch = $4`, until, l.ID, l.Node, int64(l.Epoch))
	if err != nil {
		return mapErr(err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("renew %s: %w", l.ID, store.ErrLeaseLost)
	}
	return nil
}

// Release implements spool.Backend: the message's due time becomes what
// its recipients say again.
func (s *Store) Release(ctx context.Context, l spool.Lease) error {
	return s.Update(ctx, l.ID, &l, func(*spool.Message) (spool.Effects, error) { return spool.Effects{}, nil })
}

// Update implements spool.Backend.
func (s *Store) Update(ctx context.Context, id string, lease *spool.Lease, fn func(m *spool.Message) (spool.Effects, error)) error {
	var files []fileResult
	err := s.tx(ctx, func(tx pgx.Tx) error {
		files = files[:0]
		m, node, epoch, until, err := lockMessage(ctx, tx, id)
		if err != nil {
			return err
		}
		if lease != nil && (uint64(epoch) != lease.Epoch || node == nil || *node != lease.Node) {
			return fmt.Errorf("update %s: %w", id, store.ErrLeaseLost)
		}
		before := recipientRows(m)
		eff, err := fn(m)
		if err != nil {
			return err
		}
		// The reads are done; every write goes in one round trip.
		b := &pgx.Batch{}
		if eff.File != nil {
			f, err := s.fileTx(ctx, tx, b, m, eff.File)
			if err != nil {
				return err
			}
			files = append(files, f...)
		}
		for _, n := range eff.Notices {
			n.Message.Size = int64(len(n.Body))
			if err := queueMessage(b, n.Message, splitChunks(n.Body)); err != nil {
				return err
			}
		}
		if err := queueEvents(b, eff.Events...); err != nil {
			return err
		}
		if m.Done() {
			b.Queue("DELETE FROM queue WHERE id = $1", id)
		} else {
			// An update without the lease (an operator's) keeps a
			// running lease's due time, so no other node takes the
			// message while its delivery runs.
			var keep *time.Time
			if (lease == nil || eff.KeepLease) && node != nil && until != nil {
				keep = until
			}
			queueWrite(b, m, before, lease != nil && !eff.KeepLease, keep)
		}
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return err
	}
	s.changed(true, true)
	for _, f := range files {
		s.Publish(f.user, f.ev)
	}
	return nil
}

// lockMessage reads message id with its lease, locking its row.
func lockMessage(ctx context.Context, tx pgx.Tx, id string) (m *spool.Message, node *string, epoch int64, until *time.Time, err error) {
	m = new(spool.Message)
	var params, rcpts []byte
	err = tx.QueryRow(ctx, "SELECT lease_node, lease_epoch, lease_until, "+messageCols+withRecipients+" FROM queue q WHERE id = $1 FOR UPDATE", id).
		Scan(&node, &epoch, &until, &m.ID, &m.Arrived, &m.ClientIP, &m.Helo, &m.From, &params, &m.Size, &m.Hold, &rcpts)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, 0, nil, fmt.Errorf("%s: %w", id, spool.ErrNotFound)
	}
	if err != nil {
		return nil, nil, 0, nil, err
	}
	if err := json.Unmarshal(params, &m.Params); err != nil {
		return nil, nil, 0, nil, fmt.Errorf("decode %s: %w", id, err)
	}
	m.Arrived = m.Arrived.In(time.Local)
	return m, node, epoch, until, recipientsJSON(rcpts, m)
}

func splitChunks(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := min(len(b), bodyChunk)
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// recipientRow is what writeMessage compares to find changed recipients.
type recipientRow struct {
	state         spool.State
	attempts      int
	next          time.Time
	reply         string
	remote        string
	delayNotified bool
}

func recipientRows(m *spool.Message) []recipientRow {
	rows := make([]recipientRow, len(m.Rcpts))
	for i, r := range m.Rcpts {
		reply, _ := json.Marshal(r.Reply)
		rows[i] = recipientRow{r.State, r.Attempts, r.NextAttempt, string(reply), r.RemoteMTA, r.DelayNotified}
	}
	return rows
}

// queueWrite adds to b the statements that store the changed parts of m: the hold flag, the due time
// (which also ends a lease: it is released with the write that carries it)
// and each recipient that changed.
func queueWrite(b *pgx.Batch, m *spool.Message, before []recipientRow, release bool, leased *time.Time) {
	due := nullTime(m.NextDue())
	if due != nil && leased != nil {
		due = leased
	}
	q := "UPDATE queue SET hold = $2, due = $3 WHERE id = $1"
	if release {
		q = "UPDATE queue SET hold = $2, due = $3, lease_node = NULL, lease_until = NULL WHERE id = $1"
	}
	b.Queue(q, m.ID, m.Hold, due)
	after := recipientRows(m)
	for i, r := range m.Rcpts {
		if i < len(before) && before[i] == after[i] {
			continue
		}
		b.Queue(`UPDATE recipients SET state = $3, attempts = $4, next_attempt = $5, last_reply = $6,
				remote_mta = $7, delay_notified = $8
			WHERE queue_id = $1 AND idx = $2`,
			m.ID, i, string(r.State), r.Attempts, nullTime(r.NextAttempt), after[i].reply, r.RemoteMTA, r.DelayNotified)
	}
}

// Delete implements spool.Backend.
func (s *Store) Delete(ctx context.Context, id string, ev spool.Event) error {
	err := s.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "DELETE FROM queue WHERE id = $1", id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%s: %w", id, spool.ErrNotFound)
		}
		return appendEvents(ctx, tx, ev)
	})
	if err == nil {
		s.changed(false, true)
	}
	return err
}

// Record implements spool.Backend.
func (s *Store) Record(ctx context.Context, evs ...spool.Event) error {
	err := s.tx(ctx, func(tx pgx.Tx) error { return appendEvents(ctx, tx, evs...) })
	if err == nil {
		s.changed(false, true)
	}
	return err
}

// queueEvents adds the statements that log evs to b.
func queueEvents(b *pgx.Batch, evs ...spool.Event) error {
	for _, ev := range evs {
		data, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("encode event: %w", err)
		}
		b.Queue("INSERT INTO events (time, queue_id, data) VALUES ($1, $2, $3)", ev.Time, ev.ID, data)
	}
	return nil
}

// appendEvents logs evs inside tx.
func appendEvents(ctx context.Context, tx pgx.Tx, evs ...spool.Event) error {
	b := &pgx.Batch{}
	if err := queueEvents(b, evs...); err != nil {
		return err
	}
	return tx.SendBatch(ctx, b).Close()
}

func scanEvents(rows pgx.Rows) ([]spool.Event, error) {
	defer rows.Close()
	var evs []spool.Event
	for rows.Next() {
		var seq int64
		var data []byte
		if err := rows.Scan(&seq, &data); err != nil {
			return nil, err
		}
		var ev spool.Event
		if err := json.Unmarshal(data, &ev); err != nil {
			return nil, fmt.Errorf("decode event %d: %w", seq, err)
		}
		ev.Cursor = strconv.FormatInt(seq, 10)
		evs = append(evs, ev)
	}
	return evs, rows.Err()
}

// cutoff is the oldest event time still kept.
func (s *Store) cutoff() time.Time { return s.now().Add(-spool.EventRetention) }

// LastEvents implements spool.Backend.
func (s *Store) LastEvents(ctx context.Context, n int) ([]spool.Event, error) {
	rows, err := s.pool.Query(ctx, `SELECT seq, data FROM (SELECT seq, data FROM events WHERE time >= $2 ORDER BY seq DESC LIMIT $1) e
		ORDER BY seq`, n, s.cutoff())
	if err != nil {
		return nil, mapErr(err)
	}
	evs, err := scanEvents(rows)
	return evs, mapErr(err)
}

// EventsSince implements spool.Backend.
func (s *Store) EventsSince(ctx context.Context, since time.Time, after string, limit int) ([]spool.Event, error) {
	seq := int64(-1)
	if after != "" {
		seq, _ = strconv.ParseInt(after, 10, 64)
	}
	rows, err := s.pool.Query(ctx, "SELECT seq, data FROM events WHERE (time, seq) > ($1, $2) ORDER BY time, seq LIMIT $3", since, seq, limit)
	if err != nil {
		return nil, mapErr(err)
	}
	evs, err := scanEvents(rows)
	return evs, mapErr(err)
}

// History implements spool.Backend.
func (s *Store) History(ctx context.Context, id string) ([]spool.Event, error) {
	rows, err := s.pool.Query(ctx, "SELECT seq, data FROM events WHERE queue_id = $1 AND time >= $2 ORDER BY seq", id, s.cutoff())
	if err != nil {
		return nil, mapErr(err)
	}
	evs, err := scanEvents(rows)
	return evs, mapErr(err)
}

// PruneEvents deletes the events older than EventRetention; the server
// calls it now and then (Badger expires them by itself).
func (s *Store) PruneEvents(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, "DELETE FROM events WHERE time < $1", s.cutoff())
	return mapErr(err)
}
