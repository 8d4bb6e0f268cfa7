package smtpd_test

// Free disk space: below min-free-space new mail is refused with 452 4.3.1,
// at MAIL and again at the end of the data, and taken again once space is
// back, without a restart.

import (
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/relaymail/relay/internal/diskspace"
	"github.com/relaymail/relay/relay/smtpd"
)

const (
	mib     = 1 << 20
	minFree = 200 * mib
	plenty  = 1 << 40
)

// fakeDisk is a filesystem whose free space the test sets.
type fakeDisk struct{ free atomic.Uint64 }

func (d *fakeDisk) statfs(string) (uint64, error) { return d.free.Load(), nil }

// withDisk gives cfg a guard of min-free-space minFree on a fake disk with
// plenty of room.
func withDisk(cfg smtpd.Config) (smtpd.Config, *fakeDisk) {
	d := &fakeDisk{}
	d.free.Store(plenty)
	cfg.Space = diskspace.New(diskspace.Config{Dir: "/data", MinFree: minFree, Reserve: minFree / 2, Statfs: d.statfs})
	return cfg, d
}

// TestNoSpaceAtMAIL: below min-free-space, MAIL gets 452 4.3.1 on the relay
// port and on the submission port, nothing is queued, and the same session
// is served once space is freed.
func TestNoSpaceAtMAIL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		submission bool
		from, rcpt string
	}{
		{"relay port", false, "a@example.net", subUser},
		{"submission port", true, subUser, "someone@example.org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newAuthFixture(t)
			base, _ := f.config(tc.submission)
			cfg, disk := withDisk(base)
			s := startServer(t, cfg)
			rc := s.rawHello(t)
			if tc.submission {
				rc.expect("AUTH PLAIN "+plainIR("", subUser, subPass), "235 ")
			}
			for _, free := range []uint64{minFree - 1, 1 * mib, 0} {
				disk.free.Store(free)
				if got := rc.cmd("MAIL FROM:<" + tc.from + ">"); got != "452 4.3.1 insufficient system storage" {
					t.Fatalf("MAIL with %d bytes free: %q, want 452 4.3.1 insufficient system storage", free, got)
				}
			}
			// No transaction was opened (go-smtp's own reply).
			rc.expect("RCPT TO:<"+tc.rcpt+">", "502 5.5.1")
			s.wantQueued(t, 0)

			disk.free.Store(minFree)
			rc.expect("MAIL FROM:<"+tc.from+">", "250 ")
			rc.expect("RCPT TO:<"+tc.rcpt+">", "250 ")
			rc.expect("DATA", "354 ")
			rc.expect(strings.TrimSuffix(plainBody, "\r\n")+"\r\n.", "250 ")
			s.wantQueued(t, 1)
		})
	}
}

// TestNoSpaceAtDataEnd: when the disk fills while a message is being
// received (DATA or BDAT), its end gets 452 4.3.1 instead of a commit;
// nothing is queued, and the next message, with space back, is accepted.
func TestNoSpaceAtDataEnd(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		start func(rc *rawConn)
		end   func(rc *rawConn) string
	}{
		{"DATA",
			func(rc *rawConn) {
				rc.expect("DATA", "354 ")
				rc.write("Subject: filling\r\n\r\nfirst line\r\n")
			},
			func(rc *rawConn) string { return rc.cmd("last line\r\n.") }},
		{"BDAT",
			func(rc *rawConn) {
				chunk := "Subject: filling\r\n\r\nfirst line\r\n"
				rc.write("BDAT " + strconv.Itoa(len(chunk)) + "\r\n" + chunk)
				if got := rc.reply(); !strings.HasPrefix(got, "250 ") {
					rc.t.Fatalf("first BDAT chunk: %q", got)
				}
			},
			func(rc *rawConn) string {
				chunk := "last line\r\n"
				rc.write("BDAT " + strconv.Itoa(len(chunk)) + " LAST\r\n" + chunk)
				return rc.reply()
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, disk := withDisk(testConfig())
			s := startServer(t, cfg)
			rc := s.rawHello(t)
			rc.expect("MAIL FROM:<a@example.net>", "250 ")
			rc.expect("RCPT TO:<b@localhost>", "250 ")
			tc.start(rc)
			disk.free.Store(minFree - 1)
			if got := tc.end(rc); got != "452 4.3.1 insufficient system storage" {
				t.Fatalf("end of the data after the disk filled: %q, want 452 4.3.1 insufficient system storage", got)
			}
			s.wantQueued(t, 0)

			disk.free.Store(plenty)
			rc.expect("MAIL FROM:<a@example.net>", "250 ")
			rc.expect("RCPT TO:<b@localhost>", "250 ")
			tc.start(rc)
			if got := tc.end(rc); !strings.HasPrefix(got, "250 ") {
				t.Fatalf("end of the data with space: %q, want 250", got)
			}
			s.wantQueued(t, 1)
		})
	}
}
