package imapd_test

import (
	"net"
	"strings"
	"testing"

	"github.com/relaymail/relay/mailbox/imapd"
)

// Messages whose header fields are edge cases for the SEARCH field cache.
var fieldEdgeCases = []string{
	"Subject: one\r\nSubject: two\r\n\r\nbody\r\n",
	"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\r\nFrom: =?iso-8859-1?q?J=F6rg?= <j@example.net>\r\n\r\nbody\r\n",
	"SUBJECT: Mixed CASE Key\r\nX-Empty:\r\n\r\nbody\r\n",
	"Subject: caf\xe9 latin-1 without a charset\r\n\r\nbody\r\n",
	"From: no subject at all <n@example.net>\r\n\r\nbody\r\n",
	"Subject: =?bogus?q?not_decodable?=\r\n\r\nbody\r\n",
}

// SEARCH answers the same from the field cache as from the headers: on the
// first search of a field (which only registers it), the second (which
// learns it) and later ones (answered from it), and after messages come
// and go.
func TestFieldCacheSameAnswers(t *testing.T) {
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	for _, b := range append(headEdgeCases, fieldEdgeCases...) {
		ts.deliver(t, []byte(b))
	}
	// A second server on the same store, without the cache.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	plain := imapd.New(imapd.Config{FieldCacheBytes: -1}, ts.boxes)
	served := make(chan error, 1)
	go func() { served <- plain.Serve(ln) }()
	t.Cleanup(func() {
		// Serve must have returned before Close (see testServer.stop).
		ln.Close()
		<-served
		plain.Close()
	})

	cmds := []string{
		"UID SEARCH SUBJECT one",
		"UID SEARCH SUBJECT two",
		`UID SEARCH SUBJECT "one two"`,
		`UID SEARCH CHARSET UTF-8 SUBJECT "grüße"`,
		"UID SEARCH SUBJECT =?utf-8?q?",
		"UID SEARCH SUBJECT KEY",
		"UID SEARCH SUBJECT header",
		"UID SEARCH SUBJECT caf",
		"UID SEARCH SUBJECT not_decodable",
		`UID SEARCH SUBJECT ""`,
		`UID SEARCH NOT SUBJECT ""`,
		`UID SEARCH HEADER X-Empty ""`,
		"UID SEARCH HEADER x-empty x",
		`UID SEARCH CHARSET UTF-8 FROM "jörg"`,
		"UID SEARCH FROM example.net",
		"UID SEARCH OR SUBJECT one FROM example.net",
		"UID SEARCH NOT FROM example.net",
		`UID SEARCH SUBJECT "FOLDED over"`,
		"UID SEARCH HEADER X-Tag NEEDLE",
		"UID SEARCH UNSEEN SUBJECT e",
	}
	answers := func(addr string) []string {
		rc := rawLogin(t, addr)
		rc.ok("SELECT INBOX")
		var out []string
		for _, cmd := range cmds {
			out = append(out, strings.Join(rc.ok(cmd), "\n"))
		}
		rc.ok("LOGOUT")
		return out
	}
	compare := func(round string) {
		t.Helper()
		want := answers(ln.Addr().String())
		got := answers(ts.addr)
		for i := range cmds {
			if got[i] != want[i] {
				t.Errorf("%s: %s:\nwith the cache: %s\nwithout:        %s", round, cmds[i], got[i], want[i])
			}
		}
	}
	rc := rawLogin(t, ts.addr)
	rc.ok("SELECT INBOX")
	rc.ok("SEARCH HEADER X-Once x")
	if n := ts.srv.FieldCacheValues(); n != 0 {
		t.Errorf("the first search of a field cached %d values; it should only register the field", n)
	}
	// Each field is searched several times in a round: the first search
	// of it registers it, the second learns it, the others use it.
	compare("first round")
	if n := ts.srv.FieldCacheValues(); n == 0 {
		t.Error("searching fields again cached nothing")
	}
	compare("second round")

	// A new message, and one gone.
	ts.deliver(t, []byte("Subject: one more\r\nFrom: late@example.net\r\n\r\nbody\r\n"))
	rc.ok(`UID STORE 1:2 +FLAGS (\Deleted)`)
	rc.ok("EXPUNGE")
	rc.ok("LOGOUT")
	compare("after a delivery and an expunge")
}
