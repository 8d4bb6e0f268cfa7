package main

// A full disk, end to end: the relay runs on a small tmpfs of its own that
// the test fills with a file, as another program on the same filesystem
// would. Badger maps its files, and a write into a page a full filesystem
// cannot back kills the process with SIGBUS; the relay must instead refuse
// mail, keep serving what it has, and take mail again once space is back.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"github.com/relaymail/relay/internal/diskspace"
)

// smallDisk mounts a tmpfs of sizeMiB and unmounts it when the test ends,
// keeping a copy of what it holds (but the filler) if the test failed. It
// needs root: without it the test is skipped, unless RELAY_INTEROP=1 (CI,
// which runs as root) makes that a failure.
func smallDisk(t *testing.T, sizeMiB int) string {
	t.Helper()
	cannot := t.Skipf
	if os.Getenv("RELAY_INTEROP") == "1" {
		cannot = t.Fatalf
	}
	if os.Geteuid() != 0 {
		cannot("mounting a small tmpfs needs root")
	}
	dir, err := os.MkdirTemp("", "relay-diskfull-")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm", sizeMiB), "tmpfs", dir).CombinedOutput(); err != nil {
		os.Remove(dir)
		cannot("mount -t tmpfs: %v: %s", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if t.Failed() {
			keepCopy(t, dir)
		}
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
			return
		}
		os.Remove(dir)
	})
	return dir
}

// keepCopy copies the tree at dir, less the filler, to a directory that
// stays, and logs where.
func keepCopy(t *testing.T, dir string) {
	keep, err := os.MkdirTemp("", "relay-diskfull-kept-")
	if err != nil {
		t.Logf("keep a copy of %s: %v", dir, err)
		return
	}
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || path == dir || d.Name() == "filler" {
			return err
		}
		to := filepath.Join(keep, strings.TrimPrefix(path, dir))
		if d.IsDir() {
			return os.Mkdir(to, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(to)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		return err
	})
	t.Logf("kept a copy of %s in %s for inspection (%v)", dir, keep, err)
}

// fillDisk writes the file path until the filesystem is full.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte("filler\n"), 1<<20/7)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", path, err)
			}
			break
		}
	}
	// The last pages: tmpfs counts whole pages.
	for _, n := range []int{64 << 10, 4 << 10, 1} {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
	if free := diskFree(t, filepath.Dir(path)); free != 0 {
		t.Fatalf("%s: %d bytes still free after filling", filepath.Dir(path), free)
	}
}

// leaveFree shrinks the filler at path until want bytes are free.
func leaveFree(t *testing.T, path string, want uint64) {
	t.Helper()
	free := diskFree(t, filepath.Dir(path))
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if free > want || int64(want-free) > st.Size() {
		t.Fatalf("cannot leave %d bytes free: %d free, filler %d bytes", want, free, st.Size())
	}
	if err := os.Truncate(path, st.Size()-int64(want-free)); err != nil {
		t.Fatal(err)
	}
}

func diskFree(t *testing.T, dir string) uint64 {
	t.Helper()
	free, err := diskspace.Free(dir)
	if err != nil {
		t.Fatal(err)
	}
	return free
}

// diskMessage is message i of the test, about 200 KiB (the value log holds
// its body), unique and rebuildable.
func diskMessage(i int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <alice@localhost>\r\nTo: <bob@localhost>\r\nSubject: disk %d\r\n", i)
	fmt.Fprintf(&b, "Message-ID: <disk-%d@e2e.relay.test>\r\nDate: Tue, 24 Nov 2026 12:00:00 +0000\r\n\r\n", i)
	for n := 0; b.Len() < 200<<10; n++ {
		fmt.Fprintf(&b, "message %d line %06d abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n", i, n)
	}
	return b.String()
}

// trySend sends msg from alice to bob on a new connection and returns the
// error of the first step that was refused, nil for a 250.
func trySend(t *testing.T, srv *server, msg string) error {
	t.Helper()
	c, err := smtp.Dial(srv.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("e2e.relay.test"); err != nil {
		return err
	}
	if err := c.SendMail("alice@localhost", []string{"bob@localhost"}, strings.NewReader(msg)); err != nil {
		return err
	}
	return c.Quit()
}

// wantNoStorage fails unless err is the 452 4.3.1 of a full disk.
func wantNoStorage(t *testing.T, what string, err error) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 1}) ||
		se.Message != "insufficient system storage" {
		t.Fatalf("%s: %v, want 452 4.3.1 insufficient system storage", what, err)
	}
}

// alive fails if the server process has ended.
func (s *server) alive(t *testing.T, when string) {
	t.Helper()
	select {
	case <-s.done:
		t.Fatalf("relay serve died %s: %v\n%s", when, s.waitErr, s.logText())
	default:
	}
}

// waitLog waits for a line of the server's log that holds all of subs.
func (s *server) waitLog(t *testing.T, subs ...string) {
	t.Helper()
	found := waitFor(15*time.Second, func() bool {
		for _, line := range strings.Split(s.logText(), "\n") {
			all := true
			for _, sub := range subs {
				all = all && strings.Contains(line, sub)
			}
			if all {
				return true
			}
		}
		return false
	})
	if !found {
		t.Fatalf("relay serve logged no line with %q within 15s:\n%s", subs, s.logText())
	}
}

// appendIMAP APPENDs msg to user's INBOX and returns the error.
func appendIMAP(t *testing.T, addr, user, msg string) error {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatalf("IMAP dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.Login(user, testPassword).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN %s: %v", user, err)
	}
	cmd := c.Append("INBOX", int64(len(msg)), nil)
	io.WriteString(cmd, msg)
	cmd.Close()
	_, err = cmd.Wait()
	c.Logout().Wait()
	return err
}

// flagAll sets and clears \Flagged on every message in user's INBOX, rounds
// times, and checks that the last change held: small writes that a full
// disk must still take, into the database's preallocated log.
func flagAll(t *testing.T, addr, user string, rounds int) {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatalf("IMAP dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.Login(user, testPassword).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN %s: %v", user, err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("IMAP SELECT: %v", err)
	}
	all := imap.SeqSet{{Start: 1, Stop: 0}}
	for i := range rounds {
		op := imap.StoreFlagsAdd
		if i%2 == 1 {
			op = imap.StoreFlagsDel
		}
		if err := c.Store(all, &imap.StoreFlags{Op: op, Silent: true, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close(); err != nil {
			t.Fatalf("IMAP STORE, round %d: %v", i, err)
		}
	}
	msgs, err := c.Fetch(all, &imap.FetchOptions{Flags: true}).Collect()
	if err != nil {
		t.Fatalf("IMAP FETCH FLAGS: %v", err)
	}
	want := rounds%2 == 1
	for _, m := range msgs {
		if slices.Contains(m.Flags, imap.FlagFlagged) != want {
			t.Errorf("message %d: flags %v after %d rounds of STORE", m.SeqNum, m.Flags, rounds)
		}
	}
	c.Logout().Wait()
}

// checkInbox fails unless the messages in got are exactly those of sent
// (each behind the relay's Received: header), each once.
func checkInbox(t *testing.T, got []string, sent map[int]string) {
	t.Helper()
	seen := map[int]bool{}
	for _, m := range got {
		i := -1
		for k, s := range sent {
			if strings.HasSuffix(m, s) && strings.HasPrefix(m, "Received: ") && !strings.Contains(m[:len(m)-len(s)], "\r\n\r\n") {
				i = k
			}
		}
		switch {
		case i < 0:
			t.Errorf("INBOX holds a message that was not sent whole: %.300q", m)
		case seen[i]:
			t.Errorf("message %d is in the INBOX twice", i)
		}
		seen[i] = true
	}
	for k := range sent {
		if !seen[k] {
			t.Errorf("message %d, answered 250, is not in the INBOX", k)
		}
	}
}

// TestDiskFull fills the relay's filesystem under it. Running, it refuses
// mail with 452 4.3.1 and IMAP APPEND with NO [LIMIT], refuses `relay
// sendmail`, pauses local delivery, and goes on serving IMAP reads and
// `relay queue list`; with space back it takes mail again by itself.
// Stopped, `relay serve` on the full disk exits 1 saying what to do, and
// with room for the database but less than min-free-space it starts and
// refuses mail until space frees. SIGTERM on a full disk stops it cleanly.
// Every message answered 250 is in bob's INBOX whole, once.
func TestDiskFull(t *testing.T) {
	t.Parallel()
	const (
		diskMiB = 640
		minFree = 384 << 20 // above the store's reserve of 160 MiB
	)
	mnt := smallDisk(t, diskMiB)
	data := filepath.Join(mnt, "data")
	filler := filepath.Join(mnt, "filler")
	addUsers(t, data, "bob@localhost")
	flags := []string{"--imap", "127.0.0.1:0", "--max-message-size", strconv.Itoa(1 << 20),
		"--min-free-space", strconv.Itoa(minFree)}
	srv := startServer(t, data, flags...)
	imapAddr := srv.listener(t, "imap")
	sent := map[int]string{}
	next := 0
	sendOK := func(srv *server) {
		t.Helper()
		msg := diskMessage(next)
		if err := trySend(t, srv, msg); err != nil {
			t.Fatalf("message %d: %v", next, err)
		}
		sent[next] = msg
		next++
	}
	for range 10 {
		sendOK(srv)
	}
	checkInbox(t, waitInbox(t, imapAddr, "bob@localhost", len(sent)), sent)

	// The disk fills up.
	fillDisk(t, filler)
	err := trySend(t, srv, diskMessage(next))
	srv.alive(t, "sending on a full disk")
	wantNoStorage(t, "MAIL on a full disk", err)
	srv.waitLog(t, "disk space below the database's reserve")
	srv.alive(t, "after the disk filled")
	checkInbox(t, inboxIMAP(t, imapAddr, "bob@localhost"), sent)
	flagAll(t, imapAddr, "bob@localhost", 41)
	if err := appendIMAP(t, imapAddr, "bob@localhost", diskMessage(-1)); !strings.Contains(fmt.Sprint(err), "[LIMIT] insufficient system storage") {
		t.Errorf("IMAP APPEND on a full disk: %v, want NO [LIMIT] insufficient system storage", err)
	}
	if res := mustRelay(t, "queue", "list", "--data", data); !strings.Contains(res.stdout, "queue is empty") {
		t.Errorf("queue list on a full disk: %s", res)
	}
	res := runRelayStdin(t, "Subject: cron\n\nreport\n", nil, "sendmail", "-i", "bob", "--data", data)
	if res.code != 1 || !strings.Contains(res.stderr, "not enough free disk space") || !strings.Contains(res.stderr, "not queued") {
		t.Errorf("relay sendmail on a full disk: %s\nwant exit 1 saying there is not enough disk space", res)
	}
	srv.alive(t, "after reads, APPEND and sendmail on a full disk")

	// Space is freed: mail is taken again, without a restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		sendOK(srv)
	}
	srv.waitLog(t, "disk space recovered")
	checkInbox(t, waitInbox(t, imapAddr, "bob@localhost", len(sent)), sent)
	srv.stop()

	// Stopped, on a full disk: serve exits 1 with what to do, and no
	// signal; so does queue list on the database.
	fillDisk(t, filler)
	res = runRelay(t, nil, append([]string{"serve", "--data", data, "--smtp", "127.0.0.1:0", "--submission", "off", "--http", "off"}, flags...)...)
	for _, want := range []string{"not enough free disk space", data, "0 bytes (0.0 MiB) free", "167772160 bytes (160.0 MiB) needed", "--data"} {
		if res.code != 1 || !strings.Contains(res.stderr, want) {
			t.Errorf("relay serve on a full disk: %s\nwant exit 1 with %q", res, want)
		}
	}
	if res := runRelay(t, nil, "queue", "list", "--data", data); res.code != 1 || !strings.Contains(res.stderr, "not enough free disk space") {
		t.Errorf("queue list without a server on a full disk: %s\nwant exit 1 saying there is not enough disk space", res)
	}

	// Room for the database but not min-free-space: it starts, warns and
	// refuses mail until space frees.
	leaveFree(t, filler, 300<<20)
	srv = startServer(t, data, flags...)
	imapAddr = srv.listener(t, "imap")
	srv.waitLog(t, "level=WARN", "disk space below min-free-space")
	wantNoStorage(t, "MAIL with less than min-free-space", trySend(t, srv, diskMessage(next)))
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	sendOK(srv)
	checkInbox(t, waitInbox(t, imapAddr, "bob@localhost", len(sent)), sent)

	// SIGTERM with the disk full: a clean stop, where closing Badger would
	// write a table that the disk has no room for.
	fillDisk(t, filler)
	srv.waitLog(t, "disk space below the database's reserve")
	srv.stop()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	var inbox []string
	for _, s := range readStored(t, data, "bob@localhost") {
		if s.where != "bob@localhost" {
			t.Errorf("message left in the queue: %s from %s", s.id, s.from)
			continue
		}
		inbox = append(inbox, s.content)
	}
	checkInbox(t, inbox, sent)
}
