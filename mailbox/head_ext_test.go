package mailbox_test

import (
	"strings"
	"testing"
	"time"

	bdg "github.com/dgraph-io/badger/v4"

	"github.com/relaymail/relay/mailbox"
)

// The stored header goes with the blob's last reference.
func TestHeadLifetime(t *testing.T) {
	s, db, _ := openStore(t)
	if err := s.AddUser("u@example.test", "password"); err != nil {
		t.Fatal(err)
	}
	body := "Subject: kept apart\r\n\r\nbody\r\n"
	if _, _, err := s.Append("u@example.test", "INBOX", strings.NewReader(body), time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	msgs, err := s.Messages("u@example.test", "INBOX")
	if err != nil || len(msgs) != 1 {
		t.Fatalf("Messages = %v, %v", msgs, err)
	}
	head, ok, err := s.Head(msgs[0])
	if err != nil || !ok || string(head) != "Subject: kept apart\r\n\r\n" {
		t.Fatalf("Head = %q, %v, %v", head, ok, err)
	}
	// A copy shares the blob: expunging the original keeps the header.
	if _, err := s.Copy("u@example.test", "INBOX", "Archive", []uint32{msgs[0].UID}, false, nil); err != nil {
		t.Fatal(err)
	}
	expunge(t, s, "INBOX", msgs[0].UID)
	if _, ok, _ := s.Head(msgs[0]); !ok {
		t.Fatal("header gone while a copy still refers to the blob")
	}
	arch, _ := s.Messages("u@example.test", "Archive")
	expunge(t, s, "Archive", arch[0].UID)
	if _, ok, _ := s.Head(msgs[0]); ok {
		t.Error("header left behind after the last reference went")
	}
	err = db.View(func(txn *bdg.Txn) error {
		it := txn.NewIterator(bdg.IteratorOptions{Prefix: []byte("m/h/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			t.Errorf("header key %q left", it.Item().Key())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// expunge removes message uid from box of u@example.test.
func expunge(t *testing.T, s *mailbox.Store, box string, uid uint32) {
	t.Helper()
	if _, err := s.SetFlags("u@example.test", box, []uint32{uid}, mailbox.FlagsAdd, []string{mailbox.FlagDeleted}, nil); err != nil {
		t.Fatal(err)
	}
	if gone, err := s.Expunge("u@example.test", box, []uint32{uid}, nil); err != nil || len(gone) != 1 {
		t.Fatalf("Expunge %s %d = %v, %v", box, uid, gone, err)
	}
}
