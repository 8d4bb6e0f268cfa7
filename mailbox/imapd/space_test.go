package imapd_test

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/relaymail/relay/internal/diskspace"
	"github.com/relaymail/relay/mailbox/imapd"
)

// TestAppendNoSpace: below min-free-space APPEND is refused with
// NO [LIMIT] and stores nothing, while SELECT, FETCH and SEARCH go on; once
// space is freed, APPEND works again in the same session.
func TestAppendNoSpace(t *testing.T) {
	t.Parallel()
	const minFree = 200 << 20
	var free atomic.Uint64
	free.Store(1 << 40)
	guard := diskspace.New(diskspace.Config{Dir: "/data", MinFree: minFree, Reserve: minFree / 2,
		Statfs: func(string) (uint64, error) { return free.Load(), nil }})
	ts := startServer(t, imapd.Config{Space: guard})
	c, bodies := ts.selectSamples(t, nil)
	rc := rawLogin(t, ts.addr)
	msg := []byte("From: x@example.net\r\nSubject: appended\r\n\r\nbody\r\n")

	free.Store(minFree - 1)
	if _, st := rc.appendLit("INBOX", "", msg); st != "NO [LIMIT] insufficient system storage, try again later" {
		t.Errorf("APPEND with the disk low: %q, want NO [LIMIT] insufficient system storage, try again later", st)
	}
	cmd := c.Append("INBOX", int64(len(msg)), nil)
	cmd.Write(msg)
	cmd.Close()
	if _, err := cmd.Wait(); imapCode(err) != imap.ResponseCodeLimit {
		t.Errorf("imapclient APPEND with the disk low: %v, want NO [LIMIT]", err)
	}
	// Reading goes on.
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT with the disk low: %v", err)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	got, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || len(got) != 1 || !bytes.Equal(got[0].FindBodySection(section), bodies[0]) {
		t.Errorf("FETCH with the disk low: %v, want message 1 whole", err)
	}
	if _, err := c.Search(&imap.SearchCriteria{}, nil).Wait(); err != nil {
		t.Errorf("SEARCH with the disk low: %v", err)
	}
	if n := respNum(rc.ok("STATUS INBOX (MESSAGES)"), `MESSAGES (\d+)`); n != int64(len(bodies)) {
		t.Errorf("MESSAGES %d after refused APPENDs, want %d", n, len(bodies))
	}

	free.Store(minFree)
	if _, st := rc.appendLit("INBOX", "", msg); !strings.HasPrefix(st, "OK ") {
		t.Errorf("APPEND after space was freed: %q, want OK", st)
	}
	if n := respNum(rc.ok("STATUS INBOX (MESSAGES)"), `MESSAGES (\d+)`); n != int64(len(bodies)+1) {
		t.Errorf("MESSAGES %d after the APPEND, want %d", n, len(bodies)+1)
	}
}
