package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/relaymail/relay/internal/testkit/pgtest"
)

// uidsIMAP returns the UIDVALIDITY of user's INBOX and the UIDs and
// subjects in it, as an IMAP client sees them.
func uidsIMAP(t *testing.T, addr, user string) (uint32, []string) {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatalf("IMAP dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.Login(user, testPassword).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN %s: %v", user, err)
	}
	sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Envelope: true, Flags: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range msgs {
		out = append(out, fmt.Sprintf("%d %s %v", m.UID, m.Envelope.Subject, m.Flags))
	}
	return sel.UIDValidity, out
}

// TestStoreMove: a site moves from the embedded store to PostgreSQL and
// back with `relay store backup` (taken while the server runs) and `relay
// store restore`, and an IMAP client sees the same UIDVALIDITY, UIDs,
// flags and messages on every store.
func TestStoreMove(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	dir := workDir(t)
	data := filepath.Join(dir, "badger")
	addUsers(t, data, "bob@localhost")
	srv := startServer(t, data, "--imap", "127.0.0.1:0")
	for i := range 4 {
		srv.send(t, "alice@example.net", []string{"bob@localhost"}, crlf(fmt.Sprintf("Subject: message %d\n\nbody %d\n", i, i)))
	}
	addr := srv.listener(t, "imap")
	waitInbox(t, addr, "bob@localhost", 4)
	uv, want := uidsIMAP(t, addr, "bob@localhost")
	if len(want) != 4 {
		t.Fatalf("INBOX before the move: %q", want)
	}

	file := filepath.Join(dir, "backup.tar")
	res := mustRelay(t, "store", "backup", file, "--data", data)
	if !strings.Contains(res.stdout, "backup written to "+file+": 1 account(s)") {
		t.Errorf("store backup said %q", res.stdout)
	}
	srv.stop()

	// Into PostgreSQL, served from a node with a data directory of its own.
	res = mustRelay(t, "store", "restore", file, "--store", url, "--data", filepath.Join(dir, "pg"))
	if !strings.Contains(res.stdout, "restored from") {
		t.Errorf("store restore said %q", res.stdout)
	}
	if res := runRelay(t, nil, "store", "restore", file, "--store", url, "--data", filepath.Join(dir, "pg")); res.code != 1 || !strings.Contains(res.stderr, "not empty") {
		t.Errorf("a second restore into the same store: %s\nwant exit 1 saying it is not empty", res)
	}
	pg := startServer(t, filepath.Join(dir, "pg"), "--store", url, "--imap", "127.0.0.1:0")
	pgUV, got := uidsIMAP(t, pg.listener(t, "imap"), "bob@localhost")
	if pgUV != uv || !slices.Equal(got, want) {
		t.Errorf("on PostgreSQL: UIDVALIDITY %d, %q\nwant %d, %q", pgUV, got, uv, want)
	}
	file2 := filepath.Join(dir, "backup2.tar")
	mustRelay(t, "store", "backup", file2, "--data", filepath.Join(dir, "pg"), "--store", url)
	pg.stop()

	// And back to a new embedded store.
	back := filepath.Join(dir, "back")
	mustRelay(t, "store", "restore", file2, "--data", back)
	srv2 := startServer(t, back, "--imap", "127.0.0.1:0")
	backUV, got := uidsIMAP(t, srv2.listener(t, "imap"), "bob@localhost")
	if backUV != uv || !slices.Equal(got, want) {
		t.Errorf("back on Badger: UIDVALIDITY %d, %q\nwant %d, %q", backUV, got, uv, want)
	}
	srv2.send(t, "alice@example.net", []string{"bob@localhost"}, crlf("Subject: after\n\nthe move\n"))
	waitInbox(t, srv2.listener(t, "imap"), "bob@localhost", 5)
}
