package relay_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/admin"
	"github.com/relaymail/relay/relay"
	"github.com/relaymail/relay/spool"
)

// queueFixture is a queue of four messages on a real Badger, each with
// recipients in the states a listing names, seen at now.
func queueFixture(t *testing.T) (*spool.Spool, []string, time.Time) {
	t.Helper()
	st, err := relay.OpenStorage(context.Background(), "badger", t.TempDir(), relay.StoreOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	sp := spool.New(st, func() time.Time { return now })
	later := spool.Reply{Code: 451, Enhanced: "4.4.1", Text: "connection refused"}
	msgs := []*spool.Message{
		{Arrived: now.Add(-3 * time.Hour), From: "a@src.test", Rcpts: []spool.Recipient{
			{Address: "a@one.test"},
			{Address: "b@two.test", State: spool.Delivered, Attempts: 1},
		}},
		{Arrived: now.Add(-time.Hour), From: "b@src.test", Rcpts: []spool.Recipient{
			{Address: "c@two.test", Attempts: 2, NextAttempt: now.Add(10 * time.Minute), Reply: later},
		}},
		{Arrived: now.Add(-10 * time.Minute), From: "", Hold: true, Rcpts: []spool.Recipient{
			{Address: "d@ONE.test"},
		}},
		{Arrived: now, From: "c@src.test", Rcpts: []spool.Recipient{
			{Address: "e@three.test", State: spool.Failed, Attempts: 1, Reply: spool.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user", Permanent: true}},
			{Address: "f@one.test", Attempts: 1, NextAttempt: now.Add(-time.Minute), Reply: later},
		}},
	}
	var ids []string
	for _, m := range msgs {
		m.ID = sp.NewID()
		if err := sp.Enqueue(m, strings.NewReader("Subject: x\r\n\r\nbody\r\n")); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	return sp, ids, now
}

// TestListQueueFilters: each filter keeps the messages with a recipient
// that matches it, in arrival order, and --limit stops the listing.
func TestListQueueFilters(t *testing.T) {
	sp, ids, now := queueFixture(t)
	for _, tc := range []struct {
		name string
		req  relay.ListRequest
		want []int
	}{
		{"all", relay.ListRequest{}, []int{0, 1, 2, 3}},
		{"limit", relay.ListRequest{Limit: 2}, []int{0, 1}},
		{"limit above the queue", relay.ListRequest{Limit: 10}, []int{0, 1, 2, 3}},
		{"due: new, and past its retry time", relay.ListRequest{State: "due"}, []int{0, 3}},
		{"deferred: waiting for a retry", relay.ListRequest{State: "deferred"}, []int{1}},
		{"held", relay.ListRequest{State: "held"}, []int{2}},
		{"delivered", relay.ListRequest{State: "delivered"}, []int{0}},
		{"failed", relay.ListRequest{State: "failed"}, []int{3}},
		{"domain, any case", relay.ListRequest{Domain: "one.test"}, []int{0, 2, 3}},
		{"domain with a final dot", relay.ListRequest{Domain: "TWO.test."}, []int{0, 1}},
		{"domain of nothing queued", relay.ListRequest{Domain: "src.test"}, nil},
		{"older than", relay.ListRequest{OlderThan: time.Hour}, []int{0, 1}},
		{"state and domain on one recipient", relay.ListRequest{State: "due", Domain: "two.test"}, nil},
		{"state and domain", relay.ListRequest{State: "delivered", Domain: "two.test"}, []int{0}},
		{"every filter", relay.ListRequest{State: "due", Domain: "one.test", OlderThan: time.Minute, Limit: 5}, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			err := relay.ListQueue(sp, tc.req, now, func(m *spool.Message) error {
				got = append(got, m.ID)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, i := range tc.want {
				want = append(want, ids[i])
			}
			if !slices.Equal(got, want) {
				t.Errorf("listed %v, want %v", got, want)
			}
		})
	}
}

// TestListQueueRefuses: a request that cannot mean what was typed is a
// user error, and nothing is listed.
func TestListQueueRefuses(t *testing.T) {
	sp, _, now := queueFixture(t)
	for _, tc := range []struct {
		req  relay.ListRequest
		want string
	}{
		{relay.ListRequest{Limit: -1}, "--limit"},
		{relay.ListRequest{OlderThan: -time.Second}, "--older-than"},
		{relay.ListRequest{State: "pending"}, "due, deferred, held, delivered, failed"},
		{relay.ListRequest{Domain: "bob@one.test"}, "without a local part"},
	} {
		n := 0
		err := relay.ListQueue(sp, tc.req, now, func(*spool.Message) error { n++; return nil })
		if !errors.Is(err, admin.ErrUser) || !strings.Contains(err.Error(), tc.want) || n != 0 {
			t.Errorf("%+v: %v after %d messages, want a user error naming %q", tc.req, err, n, tc.want)
		}
	}
}

// TestListQueueStopsOnError: an error from the writer (the client went
// away) ends the listing there.
func TestListQueueStopsOnError(t *testing.T) {
	sp, _, now := queueFixture(t)
	gone := errors.New("client gone")
	n := 0
	err := relay.ListQueue(sp, relay.ListRequest{}, now, func(*spool.Message) error {
		n++
		if n == 2 {
			return gone
		}
		return nil
	})
	if !errors.Is(err, gone) || n != 2 {
		t.Errorf("ListQueue: %v after %d messages, want the writer's error after 2", err, n)
	}
}

// TestRcptState names each recipient as the listing does.
func TestRcptState(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		hold bool
		r    spool.Recipient
		want string
	}{
		{false, spool.Recipient{State: spool.Pending, NextAttempt: now}, "due"},
		{false, spool.Recipient{State: spool.Pending, NextAttempt: now.Add(time.Hour)}, "due"}, // not tried yet
		{false, spool.Recipient{State: spool.Pending, Attempts: 1, NextAttempt: now.Add(time.Second)}, "deferred"},
		{false, spool.Recipient{State: spool.Pending, Attempts: 3, NextAttempt: now}, "due"},
		{true, spool.Recipient{State: spool.Pending, Attempts: 3, NextAttempt: now.Add(time.Hour)}, "held"},
		{true, spool.Recipient{State: spool.Delivered}, "delivered"},
		{false, spool.Recipient{State: spool.Failed, Attempts: 1}, "failed"},
	} {
		m := &spool.Message{Hold: tc.hold, Rcpts: []spool.Recipient{tc.r}}
		if got := relay.RcptState(m, &m.Rcpts[0], now); got != tc.want {
			t.Errorf("hold=%v %+v: %s, want %s", tc.hold, tc.r, got, tc.want)
		}
	}
}
