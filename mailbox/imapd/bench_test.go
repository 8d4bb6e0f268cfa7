package imapd_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/relaymail/relay/mailbox/imapd"
)

// Benchmarks over a real loopback connection with imapclient, on a Badger
// in a temp dir (issue 4: SELECT and FETCH of headers on 10,000 messages,
// SEARCH BODY on 10,000).
//
//	go test ./mailbox/imapd -run XXX -bench . -benchtime 3x -benchmem

const benchMessages = 10000

// benchBody is message i: distinct headers and about 1 KiB of text; every
// 100th holds "needle".
func benchBody(i int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "Date: %s\r\n", time.Date(2024, 6, 1, 0, 0, i, 0, time.UTC).Format(time.RFC1123Z))
	fmt.Fprintf(&b, "From: Sender %d <sender%d@example.net>\r\n", i%97, i%97)
	fmt.Fprintf(&b, "To: Alice <%s>\r\n", testUser)
	fmt.Fprintf(&b, "Subject: Report number %d about things\r\n", i)
	fmt.Fprintf(&b, "Message-ID: <bench-%d@example.net>\r\n", i)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
	for l := range 16 {
		fmt.Fprintf(&b, "Line %d of message %d: the quick brown fox jumps over the lazy dog.\r\n", l, i)
		if l == 8 && i%100 == 0 {
			b.WriteString("Here is the needle you were looking for.\r\n")
		}
	}
	return []byte(b.String())
}

// benchServer is a server whose INBOX holds benchMessages distinct
// messages, and a logged-in client.
func benchServer(b *testing.B) (*testServer, *imapclient.Client) {
	b.Helper()
	return benchServerCfg(b, imapd.Config{})
}

// benchServerCfg is benchServer with a configuration.
func benchServerCfg(b *testing.B, cfg imapd.Config) (*testServer, *imapclient.Client) {
	b.Helper()
	ts := startServer(b, cfg)
	bodies := make([][]byte, benchMessages)
	for i := range bodies {
		bodies[i] = benchBody(i)
	}
	fillMailbox(b, ts, benchMessages, bodies, func(i int) int { return i })
	return ts, ts.login(b, nil)
}

// benchSelected is benchServer's client with INBOX selected.
func benchSelected(b *testing.B) *imapclient.Client {
	b.Helper()
	_, c := benchServer(b)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		b.Fatal(err)
	}
	return c
}

func BenchmarkSelect10k(b *testing.B) {
	_, c := benchServer(b)
	b.ReportAllocs()
	for b.Loop() {
		data, err := c.Select("INBOX", nil).Wait()
		if err != nil {
			b.Fatal(err)
		}
		if data.NumMessages != benchMessages {
			b.Fatalf("EXISTS %d", data.NumMessages)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "selects/s")
}

func BenchmarkFetchHeaders10k(b *testing.B) {
	c := benchSelected(b)
	hdr := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"FROM", "TO", "SUBJECT", "DATE"}, Peek: true}
	opts := &imap.FetchOptions{UID: true, Flags: true, Envelope: true, BodySection: []*imap.FetchItemBodySection{hdr}}
	b.ReportAllocs()
	for b.Loop() {
		cmd := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, opts)
		n := 0
		for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
			if _, err := msg.Collect(); err != nil {
				b.Fatal(err)
			}
			n++
		}
		if err := cmd.Close(); err != nil {
			b.Fatal(err)
		}
		if n != benchMessages {
			b.Fatalf("FETCH returned %d messages", n)
		}
	}
	b.ReportMetric(float64(b.N*benchMessages)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkSearchBody10k(b *testing.B) {
	c := benchSelected(b)
	b.ReportAllocs()
	for b.Loop() {
		data, err := c.Search(&imap.SearchCriteria{Body: []string{"needle"}}, nil).Wait()
		if err != nil {
			b.Fatal(err)
		}
		if n := len(data.AllSeqNums()); n != benchMessages/100 {
			b.Fatalf("SEARCH BODY needle found %d, want %d", n, benchMessages/100)
		}
	}
	b.ReportMetric(float64(b.N*benchMessages)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkSearchSubject10k repeats one SEARCH SUBJECT, which from the
// second run on is answered from the field cache.
func BenchmarkSearchSubject10k(b *testing.B) {
	benchSearchSubject(b, imapd.Config{})
}

// BenchmarkSearchSubject10kCold is the same without the field cache: what
// the first search of a field in a mailbox costs.
func BenchmarkSearchSubject10kCold(b *testing.B) {
	benchSearchSubject(b, imapd.Config{FieldCacheBytes: -1})
}

func benchSearchSubject(b *testing.B, cfg imapd.Config) {
	_, c := benchServerCfg(b, cfg)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		data, err := c.Search(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: "number 4242 "}}}, nil).Wait()
		if err != nil {
			b.Fatal(err)
		}
		if n := len(data.AllSeqNums()); n != 1 {
			b.Fatalf("SEARCH SUBJECT found %d, want 1", n)
		}
	}
	b.ReportMetric(float64(b.N*benchMessages)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkSearchUnseen10k(b *testing.B) {
	c := benchSelected(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Search(&imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}, nil).Wait(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*benchMessages)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkFetchBody is one client's FETCH BODY.PEEK[] of single messages,
// as a reader opening mail one at a time.
func BenchmarkFetchBody(b *testing.B) {
	c := benchSelected(b)
	sec := &imap.FetchItemBodySection{Peek: true}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i = (i + 7919) % benchMessages
		msgs, err := c.Fetch(imap.SeqSetNum(uint32(i+1)), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{sec}}).Collect()
		if err != nil || len(msgs) != 1 || len(msgs[0].FindBodySection(sec)) == 0 {
			b.Fatalf("FETCH %d: %v, %d messages", i+1, err, len(msgs))
		}
	}
}
