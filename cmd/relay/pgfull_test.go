package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/testkit/pgtest"
)

// TestPostgresFull: the disk under the database fills up (its tablespace on
// a small tmpfs of its own; the write-ahead log stays on the cluster's
// disk, as when a data volume fills). The relay refuses mail with 452 4.3.1
// instead of acknowledging what it cannot store, keeps serving IMAP reads,
// and takes mail again by itself once space is back; every message answered
// 250 ends up in the INBOX whole, once.
func TestPostgresFull(t *testing.T) {
	t.Parallel()
	mnt := smallDisk(t, 64)
	space := filepath.Join(mnt, "db")
	if err := os.Mkdir(space, 0o700); err != nil {
		t.Fatal(err)
	}
	url := pgtest.URLOn(t, space)
	filler := filepath.Join(mnt, "filler")
	data := filepath.Join(workDir(t), "data")
	mustRelayStdin(t, testPassword+"\n", "user", "add", "bob@localhost", "--password-stdin", "--store", url, "--data", data)
	srv := startServer(t, data, "--store", url, "--imap", "127.0.0.1:0", "--max-message-size", strconv.Itoa(1<<20),
		"--retry-first", "1s", "--retry-max", "2s")
	imapAddr := srv.listener(t, "imap")
	sent := map[int]string{}
	next := 0
	for range 5 {
		msg := diskMessage(next)
		if err := trySend(t, srv, msg); err != nil {
			t.Fatalf("message %d: %v", next, err)
		}
		sent[next] = msg
		next++
	}
	checkInbox(t, waitInbox(t, imapAddr, "bob@localhost", len(sent)), sent)

	// The disk fills up. Pages the database freed may take a few more
	// messages; then it must refuse rather than acknowledge.
	fillDisk(t, filler)
	refused := false
	for range 50 {
		msg := diskMessage(next)
		err := trySend(t, srv, msg)
		if err != nil {
			wantNoStorage(t, "a message on a full database disk", err)
			refused = true
			break
		}
		sent[next] = msg
		next++
	}
	if !refused {
		t.Fatal("50 messages of 200 KiB acknowledged on a full database disk")
	}
	if err := appendIMAP(t, imapAddr, "bob@localhost", diskMessage(-1)); !strings.Contains(fmt.Sprint(err), "[LIMIT] insufficient system storage") {
		t.Errorf("IMAP APPEND on a full database disk: %v, want NO [LIMIT] insufficient system storage", err)
	}
	srv.alive(t, "after the database's disk filled")
	inboxIMAP(t, imapAddr, "bob@localhost") // reads go on

	// Space is back: mail is taken again without a restart, and what was
	// acknowledged while the disk was full is delivered.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		msg := diskMessage(next)
		err := trySend(t, srv, msg)
		if err == nil {
			sent[next] = msg
			next++
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mail still refused 30 s after space came back: %v\n%s", err, srv.logText())
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkInbox(t, waitInbox(t, imapAddr, "bob@localhost", len(sent)), sent)
	t.Logf("%d messages acknowledged, %d of them after the disk filled", len(sent), len(sent)-5)
}
