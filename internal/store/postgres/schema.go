package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// migrations are the schema's versions, in order; migration i brings the
// schema to version i+1. A released migration is never edited: changes come
// as a new one at the end.
var migrations = []string{
	// 1: the queue, the event log, accounts, mailboxes, messages, blobs.
	`
CREATE TABLE queue (
	id          text PRIMARY KEY,
	arrived     timestamptz NOT NULL,
	client_ip   text NOT NULL DEFAULT '',
	helo        text NOT NULL DEFAULT '',
	sender      text NOT NULL,
	params      jsonb NOT NULL,
	size        bigint NOT NULL,
	-- The body's header section, for the blob a local delivery files.
	head        bytea,
	hold        boolean NOT NULL DEFAULT false,
	-- The earliest next attempt of a pending recipient, or the end of the
	-- lease while one runs; NULL when held or nothing is pending.
	due         timestamptz,
	lease_node  text,
	lease_epoch bigint NOT NULL DEFAULT 0,
	lease_until timestamptz
);
CREATE INDEX queue_due ON queue (due) WHERE due IS NOT NULL;

CREATE TABLE recipients (
	queue_id       text NOT NULL REFERENCES queue (id) ON DELETE CASCADE,
	idx            integer NOT NULL,
	address        text NOT NULL,
	notify         text[] NOT NULL DEFAULT '{}',
	orcpt          text NOT NULL DEFAULT '',
	state          text NOT NULL,
	attempts       integer NOT NULL DEFAULT 0,
	next_attempt   timestamptz,
	last_reply     jsonb,
	remote_mta     text NOT NULL DEFAULT '',
	delay_notified boolean NOT NULL DEFAULT false,
	PRIMARY KEY (queue_id, idx)
);

CREATE TABLE bodies (
	queue_id text NOT NULL REFERENCES queue (id) ON DELETE CASCADE,
	chunk    integer NOT NULL,
	data     bytea NOT NULL,
	PRIMARY KEY (queue_id, chunk)
);
-- Bodies are stored as they are, without compression: compressing every
-- message that passes through costs more CPU than the disk it saves.
ALTER TABLE bodies ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE events (
	seq      bigserial PRIMARY KEY,
	time     timestamptz NOT NULL,
	queue_id text NOT NULL,
	data     jsonb NOT NULL
);
CREATE INDEX events_queue ON events (queue_id, seq);
CREATE INDEX events_time ON events (time, seq);

CREATE TABLE accounts (
	address text PRIMARY KEY,
	hash    bytea NOT NULL,
	created timestamptz NOT NULL
);

CREATE TABLE counters (
	name text PRIMARY KEY,
	value bigint NOT NULL
);

CREATE TABLE mailboxes (
	id             bigserial PRIMARY KEY,
	account        text NOT NULL REFERENCES accounts (address) ON DELETE CASCADE,
	name           text NOT NULL,
	special_use    text NOT NULL DEFAULT '',
	uidvalidity    bigint NOT NULL,
	uidnext        bigint NOT NULL DEFAULT 1,
	messages       bigint NOT NULL DEFAULT 0,
	size           bigint NOT NULL DEFAULT 0,
	unseen         bigint NOT NULL DEFAULT 0,
	first_recent   bigint NOT NULL DEFAULT 0,
	highest_modseq bigint NOT NULL DEFAULT 1,
	UNIQUE (account, name)
);

CREATE TABLE subscriptions (
	account text NOT NULL REFERENCES accounts (address) ON DELETE CASCADE,
	name    text NOT NULL,
	PRIMARY KEY (account, name)
);

CREATE TABLE blobs (
	id   text PRIMARY KEY,
	size bigint NOT NULL,
	-- The header section when it fits (NULL: read the body).
	head bytea,
	refs integer NOT NULL
);

CREATE TABLE blob_chunks (
	blob  text NOT NULL REFERENCES blobs (id) ON DELETE CASCADE,
	chunk integer NOT NULL,
	data  bytea NOT NULL,
	PRIMARY KEY (blob, chunk)
);
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE messages (
	mailbox bigint NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
	uid     bigint NOT NULL,
	blob    text NOT NULL REFERENCES blobs (id),
	size    bigint NOT NULL,
	date    timestamptz NOT NULL,
	flags   text[] NOT NULL DEFAULT '{}',
	modseq  bigint NOT NULL DEFAULT 1,
	PRIMARY KEY (mailbox, uid)
);
CREATE INDEX messages_blob ON messages (blob);

CREATE TABLE settings (
	name  text PRIMARY KEY,
	value bytea NOT NULL
);
`,
}

// migrationLock serializes migrations of nodes starting at once.
const migrationLock = 0x72656c6179 // "relay"

// Migrate brings the schema to the newest version, in one transaction per
// version under an advisory lock, and returns the versions before and after.
func (s *Store) Migrate(ctx context.Context) (from, to int, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, 0, mapErr(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLock); err != nil {
		return 0, 0, mapErr(err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrationLock)
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"); err != nil {
		return 0, 0, mapErr(err)
	}
	err = conn.QueryRow(ctx, "SELECT version FROM schema_version").Scan(&from)
	if errors.Is(err, pgx.ErrNoRows) {
		from = 0
		if _, err := conn.Exec(ctx, "INSERT INTO schema_version VALUES (0)"); err != nil {
			return 0, 0, mapErr(err)
		}
	} else if err != nil {
		return 0, 0, mapErr(err)
	}
	if from > len(migrations) {
		return from, from, fmt.Errorf("the database's schema is version %d, newer than this relay knows (%d): upgrade the relay", from, len(migrations))
	}
	for v := from; v < len(migrations); v++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, migrations[v]); err != nil {
				return fmt.Errorf("schema version %d: %w", v+1, err)
			}
			_, err := tx.Exec(ctx, "UPDATE schema_version SET version = $1", v+1)
			return err
		})
		if err != nil {
			return from, v, mapErr(err)
		}
	}
	return from, len(migrations), nil
}
