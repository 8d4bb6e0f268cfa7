package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/relaymail/relay/internal/store"
)

func TestTemporary(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{store.ErrNotFound, false},
		{store.ErrLeaseLost, false},
		{errors.New("bad request"), false},
		{store.ErrConflict, true},
		{store.ErrNoSpace, true},
		{store.ErrUnavailable, true},
		{store.ErrTooBig, true},
		{fmt.Errorf("enqueue 01ABC: %w", store.ErrUnavailable), true},
		{errors.Join(errors.New("x"), store.ErrNoSpace), true},
	} {
		if got := store.Temporary(tc.err); got != tc.want {
			t.Errorf("Temporary(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRetry(t *testing.T) {
	conflict := fmt.Errorf("update: %w", store.ErrConflict)
	other := errors.New("disk on fire")
	for _, tc := range []struct {
		name      string
		results   []error // fn's results in turn; the last repeats
		wantCalls int
		want      error
	}{
		{"success at once", []error{nil}, 1, nil},
		{"another error is not retried", []error{other}, 1, other},
		{"conflicts then success", []error{conflict, conflict, conflict, nil}, 4, nil},
		{"conflicts then another error", []error{conflict, other}, 2, other},
		{"conflicts run out", []error{conflict}, 64, store.ErrConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := store.Retry(context.Background(), func() error {
				r := tc.results[min(calls, len(tc.results)-1)]
				calls++
				return r
			})
			if calls != tc.wantCalls {
				t.Errorf("fn called %d times, want %d", calls, tc.wantCalls)
			}
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Retry = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestRetryCancel: a cancelled context ends the retries with both the
// conflict and the context's error.
func TestRetryCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	err := store.Retry(ctx, func() error {
		calls++
		cancel()
		return store.ErrConflict
	})
	if calls != 1 || !errors.Is(err, store.ErrConflict) || !errors.Is(err, context.Canceled) {
		t.Errorf("Retry after cancel: %d calls, %v; want 1 call, conflict and cancel", calls, err)
	}
}
