package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/relaymail/relay/internal/admin"
	"github.com/relaymail/relay/internal/config"
	"github.com/relaymail/relay/internal/store/postgres"
	"github.com/relaymail/relay/internal/store/snapshot"
	"github.com/relaymail/relay/relay"
)

// storeCmd runs `relay store VERB`: the store's own maintenance.
func storeCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("store: a verb is needed (migrate, backup, restore)")
	}
	verb, args := args[0], args[1:]
	fs := flag.NewFlagSet("relay store "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.bind(fs)
	pos, err := config.ParseInterleaved(fs, args)
	if err != nil {
		return flagError(err)
	}
	w, err := cf.resolve(fs)
	if err != nil {
		return err
	}
	ctx := context.Background()
	switch verb {
	case "migrate":
		if len(pos) != 0 {
			return usagef("store migrate takes no arguments")
		}
		return migrate(ctx, w, stdout)
	case "backup", "restore":
		if len(pos) != 1 {
			return usagef("store %s takes one FILE", verb)
		}
		return snapshotCmd(ctx, w, verb, pos[0], stdout)
	default:
		return usagef("store: unknown verb %q", verb)
	}
}

// migrate brings a PostgreSQL store's schema to this version's; the Badger
// store has no schema (its records of older versions still read).
func migrate(ctx context.Context, w where, stdout io.Writer) error {
	if !relay.IsPostgres(w.store) {
		fmt.Fprintln(stdout, "the badger store has no schema to migrate: records written by older versions are read as they are")
		return nil
	}
	st, err := postgres.Open(ctx, w.store, postgres.Options{NoMigrate: true, SkipSchemaCheck: true})
	if err != nil {
		return err
	}
	defer st.Close()
	from, to, err := st.Migrate(ctx)
	if err != nil {
		return err
	}
	if from == to {
		fmt.Fprintf(stdout, "schema is current (version %d)\n", to)
		return nil
	}
	fmt.Fprintf(stdout, "schema migrated from version %d to %d\n", from, to)
	return nil
}

// snapshotCmd is backup and restore.
func snapshotCmd(ctx context.Context, w where, verb, file string, stdout io.Writer) error {
	if verb == "restore" {
		return restore(ctx, w, file, stdout)
	}
	tmp := file + ".part"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer os.Remove(tmp)
	err = withStore(w, false,
		func(c *admin.Client) error {
			r, err := c.Stream(ctx, "store/backup", struct{}{})
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = io.Copy(f, r)
			return err
		},
		func(st *relay.Storage) error { return relay.Backup(ctx, st, f) })
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	// A stream the server had to cut short ends without the archive's
	// end: only a whole backup takes the file's name.
	st, err := checkBackup(tmp)
	if err != nil {
		return fmt.Errorf("backup: the file written is not whole (%w); nothing was kept", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	fmt.Fprintf(stdout, "backup written to %s: %s\n", file, st)
	return nil
}

// checkBackup reads a backup file to its end and counts what it holds.
func checkBackup(file string) (snapshot.Stats, error) {
	f, err := os.Open(file)
	if err != nil {
		return snapshot.Stats{}, err
	}
	defer f.Close()
	return snapshot.Check(f)
}

// restore loads a backup into an empty store. The Badger database must be
// the command's alone (no server running); a PostgreSQL store is loaded
// directly, whatever runs.
func restore(ctx context.Context, w where, file string, stdout io.Writer) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	var st snapshot.Stats
	err = withStore(w, true,
		func(c *admin.Client) error {
			var status relay.Status
			if err := c.Call(ctx, "status", struct{}{}, &status); err != nil || relay.IsPostgres(w.store) {
				// No server here, or a shared store that can be
				// loaded whatever runs: load it directly.
				return admin.ErrNoServer
			}
			return errors.New("a relay serve runs on this data directory: stop it first, restore needs the database to itself")
		},
		func(s *relay.Storage) error {
			var err error
			st, err = snapshot.Restore(ctx, f, s)
			return err
		})
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	fmt.Fprintf(stdout, "restored from %s: %s\n", file, st)
	return nil
}
