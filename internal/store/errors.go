package store

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// The neutral errors of the storage seam. Engines map their own errors to
// these (wrapped with context), so that spool, mailbox and their callers
// decide with errors.Is and never learn which engine runs.
var (
	// ErrNotFound: the record asked for does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a concurrent writer changed what the operation read.
	// Engines retry conflicts themselves (Retry); one that still reaches
	// a caller means the retries ran out.
	ErrConflict = errors.New("conflicting concurrent update")
	// ErrTooBig: one operation would write more than the engine takes in
	// one transaction.
	ErrTooBig = errors.New("operation too large for one transaction")
	// ErrNoSpace: the store has no room to write (disk full, database
	// out of space, or below the free-space floor).
	ErrNoSpace = errors.New("insufficient storage")
	// ErrUnavailable: the store cannot be reached now (a database that is
	// down or restarting); the operation may be tried again later.
	ErrUnavailable = errors.New("store unavailable")
	// ErrLeaseLost: a write carried a lease on queued work that another
	// node has taken over since (fencing): the write is refused so that
	// newer state is never overwritten.
	ErrLeaseLost = errors.New("lease lost to another node")
)

// Temporary reports whether err is a storage failure worth trying again
// later (a 4xx to an SMTP client, NO to IMAP) rather than a fault in the
// request.
func Temporary(err error) bool {
	return errors.Is(err, ErrConflict) || errors.Is(err, ErrNoSpace) ||
		errors.Is(err, ErrUnavailable) || errors.Is(err, ErrTooBig)
}

// conflictTries bounds Retry. Contention on one record (many deliveries
// into one INBOX) resolves in a few tries; more means something is wrong.
const conflictTries = 64

// Retry runs fn until it returns something other than ErrConflict, at most
// conflictTries times, pausing a short random while between tries so that
// writers contending for one record take turns. It is the one place that
// retries conflicts: engines call it around each transaction, callers
// above the seam never retry on their own.
func Retry(ctx context.Context, fn func() error) error {
	var err error
	for try := range conflictTries {
		if err = fn(); !errors.Is(err, ErrConflict) {
			return err
		}
		pause := time.Duration(rand.IntN(min(try, 10)+1)+1) * 200 * time.Microsecond
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
	}
	return err
}
