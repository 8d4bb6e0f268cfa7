package mailbox_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/mailbox"
)

const bulkUser = "bulk@example.test"

// fillBulk files n messages in the INBOX of bulkUser, one blob each, and
// returns their UIDs.
func fillBulk(t *testing.T, s *mailbox.Store, n int) []uint32 {
	t.Helper()
	addUser(t, s, bulkUser)
	var uids []uint32
	for i := range n {
		body := fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i)
		if err := deliverErr(s, []byte(body), time.Now(), bulkUser); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range messages(t, s, bulkUser, "INBOX") {
		uids = append(uids, m.UID)
	}
	return uids
}

// counters are the figures a mailbox record keeps, to compare with what
// its messages add up to.
type counters struct{ messages, unseen, size int64 }

func recorded(t *testing.T, s *mailbox.Store, box string) counters {
	t.Helper()
	mb := getMailbox(t, s, bulkUser, box)
	return counters{int64(mb.Messages), int64(mb.Unseen), mb.Size}
}

func counted(t *testing.T, s *mailbox.Store, box string) counters {
	t.Helper()
	var c counters
	for _, m := range messages(t, s, bulkUser, box) {
		c.messages++
		c.size += m.Size
		if !slices.Contains(m.Flags, mailbox.FlagSeen) {
			c.unseen++
		}
	}
	return c
}

func checkCounters(t *testing.T, s *mailbox.Store, boxes ...string) {
	t.Helper()
	for _, box := range boxes {
		if r, c := recorded(t, s, box), counted(t, s, box); r != c {
			t.Errorf("%s: the record says %+v, the messages add up to %+v", box, r, c)
		}
	}
}

// A command on more messages than one transaction holds goes in parts, and
// every part keeps the mailbox's counters right.
func TestBulkInParts(t *testing.T) {
	s, db, _ := openStore(t)
	s.SetBatching(7, nil)
	uids := fillBulk(t, s, 100)

	changes, err := s.SetFlags(bulkUser, "INBOX", uids, mailbox.FlagsAdd, []string{mailbox.FlagSeen}, nil)
	if err != nil || len(changes) != 100 {
		t.Fatalf("SetFlags on 100 in parts of 7: %d changes, %v", len(changes), err)
	}
	checkCounters(t, s, "INBOX")
	res, err := s.Copy(bulkUser, "INBOX", "Archive", uids, false, nil)
	if err != nil || len(res.DstUIDs) != 100 || len(res.SrcUIDs) != 100 {
		t.Fatalf("Copy of 100: %+v, %v", res, err)
	}
	if res.DstUIDs[0] != 1 || res.DstUIDs[99] != 100 || res.UIDValidity != getMailbox(t, s, bulkUser, "Archive").UIDValidity {
		t.Errorf("Copy's UIDs %d..%d, UIDVALIDITY %d", res.DstUIDs[0], res.DstUIDs[99], res.UIDValidity)
	}
	for _, m := range messages(t, s, bulkUser, "INBOX")[:3] {
		if n, _ := refcount(t, db, m.Blob); n != 2 {
			t.Errorf("blob of a copied message has %d references, want 2", n)
		}
	}
	checkCounters(t, s, "INBOX", "Archive")
	if _, err := s.SetFlags(bulkUser, "INBOX", uids, mailbox.FlagsAdd, []string{mailbox.FlagDeleted}, nil); err != nil {
		t.Fatal(err)
	}
	gone, err := s.Expunge(bulkUser, "INBOX", nil, nil)
	if err != nil || !slices.Equal(gone, uids) {
		t.Fatalf("Expunge of all: %d gone, %v", len(gone), err)
	}
	checkCounters(t, s, "INBOX", "Archive")
	moved, err := s.Copy(bulkUser, "Archive", "Trash", res.DstUIDs, true, nil)
	if err != nil || len(moved.DstUIDs) != 100 {
		t.Fatalf("Move of 100: %+v, %v", moved, err)
	}
	checkCounters(t, s, "Archive", "Trash")
	if r := recorded(t, s, "Trash"); r.messages != 100 || r.unseen != 0 {
		t.Errorf("Trash after the move: %+v", r)
	}
}

// Parts that still do not fit a transaction are halved until they do:
// 8,000 messages given 15 long keywords each pass Badger's limit of 4.8 MiB
// a transaction.
func TestBulkHalvesTooBigParts(t *testing.T) {
	s, _, _ := openStore(t)
	s.SetBatching(200000, nil)
	uids := fillBulk(t, s, 8000)
	var keywords []string
	for i := range 15 {
		keywords = append(keywords, fmt.Sprintf("$Keyword%02d-%s", i, strings.Repeat("x", 48)))
	}
	changes, err := s.SetFlags(bulkUser, "INBOX", uids, mailbox.FlagsAdd, keywords, nil)
	if err != nil || len(changes) != len(uids) {
		t.Fatalf("SetFlags on %d: %d changes, %v", len(uids), len(changes), err)
	}
	for _, m := range messages(t, s, bulkUser, "INBOX") {
		if len(m.Flags) != len(keywords) {
			t.Fatalf("UID %d has flags %v", m.UID, m.Flags)
		}
	}
	checkCounters(t, s, "INBOX")
}

// A COPY that fails partway leaves the destination as it was (RFC 3501
// §6.4.7), apart from UIDNEXT; a MOVE that fails partway leaves each
// message in exactly one of the two mailboxes (RFC 6851 §3.3) and tells
// every session, the one that asked too, what left the source.
func TestBulkFailsPartway(t *testing.T) {
	s, db, _ := openStore(t)
	uids := fillBulk(t, s, 50)
	broken := errors.New("disk on fire")
	s.SetBatching(10, func(part int) error {
		if part == 3 {
			return broken
		}
		return nil
	})
	before := getMailbox(t, s, bulkUser, "Archive")
	sub := s.Subscribe(bulkUser)
	defer sub.Close()

	if _, err := s.Copy(bulkUser, "INBOX", "Archive", uids, false, "me"); !errors.Is(err, broken) {
		t.Fatalf("Copy with a failing fourth part: %v, want %v", err, broken)
	}
	after := getMailbox(t, s, bulkUser, "Archive")
	if after.Messages != 0 || after.Size != 0 || after.Unseen != 0 || len(messages(t, s, bulkUser, "Archive")) != 0 {
		t.Errorf("Archive after a failed COPY: %+v", after)
	}
	if after.UIDNext != before.UIDNext+30 {
		t.Errorf("UIDNEXT %d after a failed COPY of 30, was %d: UIDs must not come back", after.UIDNext, before.UIDNext)
	}
	for _, m := range messages(t, s, bulkUser, "INBOX") {
		if n, _ := refcount(t, db, m.Blob); n != 1 {
			t.Fatalf("UID %d: %d references after the failed COPY, want 1", m.UID, n)
		}
	}
	if evs, _ := sub.Drain(); len(evs) != 0 {
		t.Errorf("a failed COPY announced %+v", evs)
	}

	_, err := s.Copy(bulkUser, "INBOX", "Archive", uids, true, "me")
	if !errors.Is(err, broken) {
		t.Fatalf("Move with a failing fourth part: %v, want %v", err, broken)
	}
	left, moved := messages(t, s, bulkUser, "INBOX"), messages(t, s, bulkUser, "Archive")
	if len(left) != 20 || len(moved) != 30 {
		t.Errorf("after a MOVE that failed in its fourth part: %d left, %d moved; want 20 and 30", len(left), len(moved))
	}
	checkCounters(t, s, "INBOX", "Archive")
	evs, _ := sub.Drain()
	var expunged []uint32
	for _, ev := range evs {
		if ev.Source != nil && len(ev.Expunged) > 0 {
			t.Errorf("the partial MOVE's expunges carry source %v: the session that asked would miss them", ev.Source)
		}
		expunged = append(expunged, ev.Expunged...)
	}
	if !slices.Equal(expunged, uids[:30]) {
		t.Errorf("announced expunges %v, want %v", expunged, uids[:30])
	}

	s.SetBatching(10, func(part int) error {
		if part == 1 {
			return broken
		}
		return nil
	})
	if _, err := s.SetFlags(bulkUser, "INBOX", uids[30:], mailbox.FlagsAdd, []string{mailbox.FlagSeen}, "me"); !errors.Is(err, broken) {
		t.Fatalf("SetFlags with a failing second part: %v", err)
	}
	checkCounters(t, s, "INBOX")
	if r := recorded(t, s, "INBOX"); r.unseen != 10 {
		t.Errorf("unseen after a STORE that did 10 of 20: %d, want 10", r.unseen)
	}
	evs, _ = sub.Drain()
	if len(evs) != 1 || evs[0].Source != nil || !slices.Equal(evs[0].Flags, uids[30:40]) {
		t.Errorf("events of the partial STORE: %+v", evs)
	}
}
