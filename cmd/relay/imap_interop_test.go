package main

// IMAP interop tests (issue 4): real clients (python3 imaplib, curl, mbsync)
// and go-imap's imapclient read over IMAP what was sent to a real
// `relay serve` over SMTP. The relay stores each message as it was sent
// with one Received: header field of its own in front.

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"
)

// imapUsers are the accounts of every IMAP interop server (password
// testPassword).
var imapUsers = []string{"alice@localhost", "bob@localhost"}

// startIMAPServer starts `relay serve` with SMTP and IMAP (STARTTLS) on free
// loopback ports and the accounts imapUsers, and returns the server and the
// IMAP listener's address, taken from its "listening" log line.
func startIMAPServer(t *testing.T) (*server, string) {
	t.Helper()
	data := filepath.Join(workDir(t), "data")
	addUsers(t, data, imapUsers...)
	srv := startServer(t, data, "--imap", "127.0.0.1:0")
	var addr string
	found := waitFor(10*time.Second, func() bool {
		for _, line := range strings.Split(srv.logText(), "\n") {
			if m := listenLine.FindStringSubmatch(line); m != nil && m[1] == "imap" {
				addr = m[2]
				return true
			}
		}
		return false
	})
	if !found {
		t.Fatalf("relay serve did not log its imap address within 10s:\n%s", srv.logText())
	}
	return srv, addr
}

// sendSMTP sends msg over SMTP to the relay port, with BODY=8BITMIME when
// eightBit, and fails the test unless DATA is answered 250. It returns the
// time the 250 reply came.
func sendSMTP(t *testing.T, srv *server, from string, to []string, msg string, eightBit bool) time.Time {
	t.Helper()
	c := srv.dial(t)
	opts := &smtp.MailOptions{}
	if eightBit {
		opts.Body = smtp.Body8BitMIME
	}
	if err := c.Mail(from, opts); err != nil {
		t.Fatalf("MAIL FROM:<%s>: %v", from, err)
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatalf("RCPT TO:<%s>: %v", rcpt, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := io.WriteString(w, msg); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA: %v", err)
	}
	at := time.Now()
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	return at
}

// stripReceived returns msg without its first header field, which must be a
// Received: field (with its continuation lines), and whether it was one.
func stripReceived(msg string) (string, bool) {
	if !strings.HasPrefix(msg, "Received:") {
		return msg, false
	}
	i := 0
	for {
		j := strings.Index(msg[i:], "\r\n")
		if j < 0 {
			return msg, false
		}
		i += j + 2
		if i == len(msg) || (msg[i] != ' ' && msg[i] != '\t') {
			return msg[i:], true
		}
	}
}

// checkDelivered checks that got, a message read back over IMAP, is sent
// behind the relay's one Received: header field.
func checkDelivered(t *testing.T, what, got, sent string) {
	t.Helper()
	rest, ok := stripReceived(got)
	if !ok {
		t.Errorf("%s does not start with a Received: header field:\n%.400q", what, got)
		return
	}
	if rest != sent {
		t.Errorf("%s, less its Received: field, differs from what was sent over SMTP:\ngot  %q\nwant %q", what, rest, sent)
	}
}

// sampleMessage reads a sample message under testdata (path relative to
// it) with CRLF line ends.
func sampleMessage(t *testing.T, path ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(append([]string{"..", "..", "testdata"}, path...)...))
	if err != nil {
		t.Fatal(err)
	}
	return crlf(string(b))
}

// imaplibScript drives imaplib through the commands issue 4 names and prints
// what it saw as one JSON object; message contents are base64.
const imaplibScript = `
import base64, imaplib, json, re, sys

host, port, user, password, draft_file = sys.argv[1:6]
draft = open(draft_file, "rb").read()
out = {}
b64 = lambda b: base64.b64encode(b).decode()

def ok(what, res):
    typ, data = res
    if typ != "OK":
        sys.exit("%s: %s %r" % (what, typ, data))
    return data

def flags(M, seq):
    data = ok("FETCH FLAGS", M.fetch(seq, "(FLAGS)"))
    m = re.search(rb"FLAGS \(([^)]*)\)", data[0])
    return sorted(m.group(1).decode().split())

def bodies(M, seqs):
    res = []
    for seq in seqs:
        data = ok("FETCH BODY.PEEK[]", M.fetch(seq, "(UID BODY.PEEK[])"))
        meta = b" ".join(d[0] if isinstance(d, tuple) else d for d in data)
        body = [d[1] for d in data if isinstance(d, tuple)][0]
        res.append({"seq": int(seq), "uid": int(re.search(rb"UID (\d+)", meta).group(1)), "body": b64(body)})
    return res

M = imaplib.IMAP4(host, int(port), timeout=30)
ok("LOGIN", M.login(user, password))
out["capabilities"] = sorted(ok("CAPABILITY", M.capability())[0].decode().upper().split())
out["list"] = [d.decode() for d in ok("LIST", M.list())]

out["select_exists"] = int(ok("SELECT INBOX", M.select("INBOX"))[0])
out["search_all"] = ok("SEARCH ALL", M.search(None, "ALL"))[0].decode().split()
out["search_subject"] = ok("SEARCH SUBJECT", M.search(None, "SUBJECT", '"plain sample"'))[0].decode().split()
out["search_text"] = ok("SEARCH TEXT", M.search(None, "TEXT", "marzipan"))[0].decode().split()
out["uid_search_all"] = ok("UID SEARCH ALL", M.uid("SEARCH", "ALL"))[0].decode().split()
out["inbox"] = bodies(M, out["search_all"])
out["flags_after_peek"] = flags(M, "1")

out["store"] = ok("STORE", M.store("1", "+FLAGS", "(\\Flagged)"))[0].decode()
out["flags_after_store"] = flags(M, "1")
out["search_flagged"] = ok("SEARCH FLAGGED", M.search(None, "FLAGGED"))[0].decode().split()
ok("FETCH BODY[]", M.fetch("1", "(BODY[])"))
out["flags_after_fetch"] = flags(M, "1")
out["search_unseen"] = ok("SEARCH UNSEEN", M.search(None, "UNSEEN"))[0].decode().split()

moved_uid = str(out["inbox"][1]["uid"])
ok("UID MOVE", M.uid("MOVE", moved_uid, "Archive"))
out["move_expunge"] = [d.decode() for d in M.response("EXPUNGE")[1] if d]
out["move_copyuid"] = [d.decode() for d in M.response("COPYUID")[1] if d]
out["search_after_move"] = ok("SEARCH ALL", M.search(None, "ALL"))[0].decode().split()

ok("STORE \\Deleted", M.store("2", "+FLAGS.SILENT", "(\\Deleted)"))
out["expunge"] = [d.decode() for d in ok("EXPUNGE", M.expunge()) if d]
out["search_after_expunge"] = ok("SEARCH ALL", M.search(None, "ALL"))[0].decode().split()
ok("CLOSE", M.close())

out["archive_exists"] = int(ok("EXAMINE Archive", M.select("Archive", readonly=True))[0])
out["archive"] = bodies(M, ok("SEARCH ALL", M.search(None, "ALL"))[0].decode().split())

out["append"] = ok("APPEND", M.append("Drafts", "(\\Draft \\Seen)", '"01-Feb-2024 10:20:30 +0100"', draft))[0].decode()
ok("SELECT Drafts", M.select("Drafts"))
out["drafts"] = bodies(M, ok("SEARCH ALL", M.search(None, "ALL"))[0].decode().split())
out["draft_flags"] = flags(M, "1")
meta = ok("FETCH INTERNALDATE", M.fetch("1", "(INTERNALDATE)"))[0]
out["draft_internaldate"] = re.search(rb'INTERNALDATE "([^"]*)"', meta).group(1).decode()
M.logout()
print(json.dumps(out))
`

// imaplibResult is what imaplibScript prints.
type imaplibResult struct {
	Capabilities       []string  `json:"capabilities"`
	List               []string  `json:"list"`
	SelectExists       int       `json:"select_exists"`
	SearchAll          []string  `json:"search_all"`
	SearchSubject      []string  `json:"search_subject"`
	SearchText         []string  `json:"search_text"`
	UIDSearchAll       []string  `json:"uid_search_all"`
	Inbox              []fetched `json:"inbox"`
	FlagsAfterPeek     []string  `json:"flags_after_peek"`
	Store              string    `json:"store"`
	FlagsAfterStore    []string  `json:"flags_after_store"`
	SearchFlagged      []string  `json:"search_flagged"`
	FlagsAfterFetch    []string  `json:"flags_after_fetch"`
	SearchUnseen       []string  `json:"search_unseen"`
	MoveExpunge        []string  `json:"move_expunge"`
	MoveCopyUID        []string  `json:"move_copyuid"`
	SearchAfterMove    []string  `json:"search_after_move"`
	Expunge            []string  `json:"expunge"`
	SearchAfterExpunge []string  `json:"search_after_expunge"`
	ArchiveExists      int       `json:"archive_exists"`
	Archive            []fetched `json:"archive"`
	Append             string    `json:"append"`
	Drafts             []fetched `json:"drafts"`
	DraftFlags         []string  `json:"draft_flags"`
	DraftInternalDate  string    `json:"draft_internaldate"`
}

type fetched struct {
	Seq  int    `json:"seq"`
	UID  int    `json:"uid"`
	Body []byte `json:"body"` // base64 in JSON
}

// TestIMAPInteropImaplib drives the IMAP server with python3 imaplib: LOGIN,
// LIST, SELECT, SEARCH, FETCH, STORE, MOVE, EXPUNGE and APPEND on messages
// sent over SMTP.
func TestIMAPInteropImaplib(t *testing.T) {
	t.Parallel()
	python := needTool(t, "python3")
	srv, imapAddr := startIMAPServer(t)

	sent := []string{
		sampleMessage(t, "messages", "plain.eml"),
		crlf("From: Carol <carol@localhost>\nTo: Alice <alice@localhost>\nSubject: second\nMessage-ID: <second@relay.test>\n\nThe marzipan is in the fridge.\n"),
		sampleMessage(t, "imap", "8bit.eml"),
	}
	sendSMTP(t, srv, "bob@localhost", []string{"alice@localhost"}, sent[0], false)
	sendSMTP(t, srv, "carol@localhost", []string{"alice@localhost"}, sent[1], false)
	sendSMTP(t, srv, "joerg@localhost", []string{"alice@localhost"}, sent[2], true)
	// Bob's mail must not show in Alice's INBOX.
	sendSMTP(t, srv, "carol@localhost", []string{"bob@localhost"}, crlf("Subject: for bob\n\nmarzipan for bob\n"), false)

	dir := t.TempDir()
	draft := crlf("From: Alice <alice@localhost>\nTo: Bob <bob@localhost>\nSubject: draft\nDate: Thu, 01 Feb 2024 10:20:30 +0100\n\nunfinished\n")
	draftFile := filepath.Join(dir, "draft.eml")
	script := filepath.Join(dir, "imaplib_interop.py")
	if err := os.WriteFile(draftFile, []byte(draft), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, []byte(imaplibScript), 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(imapAddr, ":")
	out, code := runTool(t, python, script, host, port, "alice@localhost", testPassword, draftFile)
	if code != 0 {
		t.Fatalf("python3 imaplib exit %d:\n%s", code, out)
	}
	var r imaplibResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("python3 imaplib printed no JSON: %v\n%s", err, out)
	}

	for _, c := range []string{"IMAP4REV1", "IDLE", "MOVE", "UIDPLUS"} {
		if !slices.Contains(r.Capabilities, c) {
			t.Errorf("CAPABILITY lacks %s: %v", c, r.Capabilities)
		}
	}
	checkListed(t, "LIST", strings.Join(r.List, "\n"))

	if r.SelectExists != 3 || !slices.Equal(r.SearchAll, []string{"1", "2", "3"}) {
		t.Errorf("INBOX: SELECT says %d EXISTS, SEARCH ALL %v; want Alice's 3 messages", r.SelectExists, r.SearchAll)
	}
	if !slices.Equal(r.UIDSearchAll, []string{"1", "2", "3"}) {
		t.Errorf("UID SEARCH ALL = %v, want [1 2 3]", r.UIDSearchAll)
	}
	if !slices.Equal(r.SearchSubject, []string{"1"}) {
		t.Errorf(`SEARCH SUBJECT "plain sample" = %v, want [1]`, r.SearchSubject)
	}
	if !slices.Equal(r.SearchText, []string{"2"}) {
		t.Errorf("SEARCH TEXT marzipan = %v, want [2] (Bob's message is not Alice's)", r.SearchText)
	}
	if len(r.Inbox) != len(sent) {
		t.Fatalf("fetched %d INBOX messages, want %d", len(r.Inbox), len(sent))
	}
	for i, m := range r.Inbox {
		checkDelivered(t, fmt.Sprintf("INBOX message %d (UID %d) BODY.PEEK[]", m.Seq, m.UID), string(m.Body), sent[i])
	}
	// Dovecot's \Recent semantics: the first session to select sees it.
	if !slices.Equal(r.FlagsAfterPeek, []string{`\Recent`}) {
		t.Errorf("FLAGS after BODY.PEEK[] = %v, want [\\Recent] (PEEK must not set \\Seen)", r.FlagsAfterPeek)
	}
	if !strings.Contains(r.Store, `\Flagged`) || !slices.Contains(r.FlagsAfterStore, `\Flagged`) {
		t.Errorf("STORE 1 +FLAGS (\\Flagged) answered %q, FLAGS then %v; want \\Flagged", r.Store, r.FlagsAfterStore)
	}
	if !slices.Equal(r.SearchFlagged, []string{"1"}) {
		t.Errorf("SEARCH FLAGGED = %v, want [1]", r.SearchFlagged)
	}
	if !slices.Contains(r.FlagsAfterFetch, `\Seen`) || !slices.Equal(r.SearchUnseen, []string{"2", "3"}) {
		t.Errorf("after FETCH BODY[]: FLAGS %v, SEARCH UNSEEN %v; want \\Seen set on 1 (RFC 3501 §6.4.5), unseen [2 3]", r.FlagsAfterFetch, r.SearchUnseen)
	}
	// RFC 6851 §3.3: MOVE expunges the source message (sequence 2) and,
	// with UIDPLUS, reports COPYUID.
	if !slices.Equal(r.MoveExpunge, []string{"2"}) || !slices.Equal(r.SearchAfterMove, []string{"1", "2"}) {
		t.Errorf("UID MOVE %d Archive: EXPUNGE %v, then SEARCH ALL %v; want [2], [1 2]", r.Inbox[1].UID, r.MoveExpunge, r.SearchAfterMove)
	}
	if len(r.MoveCopyUID) != 1 || !regexp.MustCompile(`^\d+ 2 1$`).MatchString(r.MoveCopyUID[0]) {
		t.Errorf("UID MOVE: COPYUID %q, want one \"uidvalidity 2 1\"", r.MoveCopyUID)
	}
	if !slices.Equal(r.Expunge, []string{"2"}) || !slices.Equal(r.SearchAfterExpunge, []string{"1"}) {
		t.Errorf("EXPUNGE of message 2: answered %v, then SEARCH ALL %v; want [2], [1]", r.Expunge, r.SearchAfterExpunge)
	}
	if r.ArchiveExists != 1 || len(r.Archive) != 1 {
		t.Fatalf("Archive after MOVE: %d EXISTS, %d fetched; want 1", r.ArchiveExists, len(r.Archive))
	}
	checkDelivered(t, "the moved message in Archive", string(r.Archive[0].Body), sent[1])

	// RFC 4315: APPEND answers APPENDUID; the message is stored as given,
	// with its flags and date.
	if !regexp.MustCompile(`^\[APPENDUID \d+ 1\]`).MatchString(r.Append) {
		t.Errorf("APPEND to Drafts answered %q, want [APPENDUID uidvalidity 1]", r.Append)
	}
	if len(r.Drafts) != 1 || string(r.Drafts[0].Body) != draft {
		t.Errorf("Drafts after APPEND: %d messages, want 1 that is the appended one byte for byte", len(r.Drafts))
	} else if r.Drafts[0].UID != 1 {
		t.Errorf("the appended message has UID %d, want 1", r.Drafts[0].UID)
	}
	for _, f := range []string{`\Draft`, `\Seen`} {
		if !slices.Contains(r.DraftFlags, f) {
			t.Errorf("the appended message has FLAGS %v, want %s among them", r.DraftFlags, f)
		}
	}
	const layout = "_2-Jan-2006 15:04:05 -0700" // RFC 3501 date-day-fixed
	want, _ := time.Parse(layout, "01-Feb-2024 10:20:30 +0100")
	if got, err := time.Parse(layout, r.DraftInternalDate); err != nil || !got.Equal(want) {
		t.Errorf("the appended message has INTERNALDATE %q, want the instant of 01-Feb-2024 10:20:30 +0100", r.DraftInternalDate)
	}
}

// checkListed checks that a LIST answer names every mailbox an account
// starts with, the special ones with their RFC 6154 attribute.
func checkListed(t *testing.T, what, list string) {
	t.Helper()
	for name, attr := range map[string]string{"INBOX": "", "Sent": `\Sent`, "Drafts": `\Drafts`, "Trash": `\Trash`, "Junk": `\Junk`, "Archive": `\Archive`} {
		re := regexp.MustCompile(`(?m)\(([^)]*)\) "/" "?` + name + `"?\r?$`)
		m := re.FindStringSubmatch(list)
		if m == nil {
			t.Errorf("%s does not list %s:\n%s", what, name, list)
			continue
		}
		if attr != "" && !slices.Contains(strings.Fields(m[1]), attr) {
			t.Errorf("%s lists %s with attributes (%s), want %s among them", what, name, m[1], attr)
		}
	}
}

// TestIMAPInteropCurl fetches mail with curl's imap:// URLs (RFC 5092):
// a message by UID, a section of it, a mailbox listing and a SEARCH.
func TestIMAPInteropCurl(t *testing.T) {
	t.Parallel()
	curl := needTool(t, "curl")
	srv, imapAddr := startIMAPServer(t)
	sent := []string{
		sampleMessage(t, "messages", "plain.eml"),
		sampleMessage(t, "imap", "multipart.eml"),
	}
	for _, msg := range sent {
		sendSMTP(t, srv, "carol@localhost", []string{"alice@localhost"}, msg, false)
	}
	base := "imap://" + imapAddr + "/"
	run := func(args ...string) string {
		t.Helper()
		args = append([]string{"-s", "-S", "--max-time", "20", "--user", "alice@localhost:" + testPassword}, args...)
		out, code := runTool(t, curl, args...)
		if code != 0 {
			t.Fatalf("curl %s: exit %d\n%s", strings.Join(args[6:], " "), code, out)
		}
		return out
	}

	for i, msg := range sent {
		url := fmt.Sprintf("%sINBOX;UID=%d", base, i+1)
		checkDelivered(t, "curl "+url, run(url), msg)
	}
	// BODY[TEXT] of the plain message: what follows the blank line.
	_, text, _ := strings.Cut(sent[0], "\r\n\r\n")
	if got := run(base + "INBOX;UID=1;SECTION=TEXT"); got != text {
		t.Errorf("curl INBOX;UID=1;SECTION=TEXT = %q, want %q", got, text)
	}
	// BODY[2] of the multipart message: the base64 attachment as sent,
	// without the CRLF that belongs to the closing boundary (RFC 2046 §5.1.1).
	_, att, _ := strings.Cut(sent[1], "Content-Transfer-Encoding: base64\r\n\r\n")
	att, _, _ = strings.Cut(att, "\r\n--outer-boundary--")
	if got := run(base + "INBOX;UID=2;SECTION=2"); att == "" || got != att {
		t.Errorf("curl INBOX;UID=2;SECTION=2 = %q, want the attachment's base64 %q", got, att)
	}
	checkListed(t, "curl "+base, run(base))
	if got := run(base+"INBOX", "-X", `SEARCH SUBJECT "Holiday pictures"`); !regexp.MustCompile(`(?m)^\* SEARCH 2\r?$`).MatchString(got) {
		t.Errorf("curl -X SEARCH SUBJECT: %q, want * SEARCH 2", got)
	}
	// A wrong password is refused (curl exit 67, login denied).
	out, code := runTool(t, curl, "-s", "--max-time", "20", "--user", "alice@localhost:wrong", base+"INBOX;UID=1")
	if code != 67 {
		t.Errorf("curl with a wrong password: exit %d, want 67 (login denied):\n%s", code, out)
	}
}

// xTUID is the header field mbsync adds to every message it stores in a
// Maildir (isync 1.4 writes it even on Sync Pull) to find the message again.
var xTUID = regexp.MustCompile(`(?m)^X-TUID: [A-Za-z0-9+/]{12}\n`)

// TestIMAPInteropMbsync syncs Alice's account into Maildirs with mbsync
// (isync), over a plain loopback connection with LOGIN and over STARTTLS
// with AUTHENTICATE PLAIN checking the relay's self-signed certificate.
// Every message in the Maildir INBOX must be the stored message (what was
// sent over SMTP behind the relay's Received: field) as mbsync writes
// Maildirs: with LF line ends (isync converts CRLF to the Maildir's native
// LF) and one X-TUID: field of its own; the test takes exactly those two
// changes back and wants the rest byte for byte.
func TestIMAPInteropMbsync(t *testing.T) {
	t.Parallel()
	mbsync := needTool(t, "mbsync")
	// isync 1.4 renamed Master/Slave to Far/Near.
	farNear := [2]string{"Far", "Near"}
	ver, _ := runTool(t, mbsync, "--version")
	var major, minor int
	if _, err := fmt.Sscanf(strings.TrimSpace(ver), "isync %d.%d", &major, &minor); err == nil && major == 1 && minor < 4 {
		farNear = [2]string{"Master", "Slave"}
	}
	srv, imapAddr := startIMAPServer(t)
	_, port, _ := strings.Cut(imapAddr, ":")

	big := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/\r\n", 2000)
	sent := []string{
		sampleMessage(t, "messages", "plain.eml"),
		sampleMessage(t, "imap", "multipart.eml"),
		sampleMessage(t, "imap", "8bit.eml"),
		sampleMessage(t, "imap", "nested.eml"),
		crlf("From: Carol <carol@localhost>\nTo: Alice <alice@localhost>\nSubject: big attachment\nMIME-Version: 1.0\n" +
			"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" +
			"Größe: 130 KB\n--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n" + big + "--b--\n"),
	}
	for i, msg := range sent {
		sendSMTP(t, srv, "carol@localhost", []string{"alice@localhost"}, msg, i == 2 || i == 4)
	}

	dir := t.TempDir()
	maildirs := map[string]string{}
	for _, mode := range []struct{ name, account string }{
		{"plain", fmt.Sprintf("Host 127.0.0.1\nPort %s\nSSLType None\nAuthMechs LOGIN\n", port)},
		// The self-signed certificate names the relay's hostname, localhost.
		{"starttls", fmt.Sprintf("Host localhost\nPort %s\nSSLType STARTTLS\nCertificateFile %s\nAuthMechs PLAIN\n",
			port, filepath.Join(srv.data, "tls", "cert.pem"))},
	} {
		md := filepath.Join(dir, mode.name)
		rc := filepath.Join(dir, mode.name+".mbsyncrc")
		if err := os.MkdirAll(md, 0o700); err != nil {
			t.Fatal(err)
		}
		conf := "IMAPAccount relay\n" + mode.account + "User alice@localhost\nPass " + testPassword + "\n\n" +
			"IMAPStore far\nAccount relay\n\n" +
			"MaildirStore near\nPath " + md + "/\nInbox " + md + "/INBOX\n\n" +
			"Channel alice\n" + farNear[0] + " :far:\n" + farNear[1] + " :near:\nPatterns *\nCreate " + farNear[1] + "\nSync Pull\nSyncState *\n"
		if err := os.WriteFile(rc, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		out, code := runTool(t, mbsync, "-c", rc, "-a")
		if code != 0 {
			t.Fatalf("mbsync (%s) exit %d:\n%s\nconfig:\n%s", mode.name, code, out, conf)
		}
		maildirs[mode.name] = md
	}

	srv.stop()
	var stored []string
	for _, s := range readStored(t, srv.data, "alice@localhost") {
		if s.where == "alice@localhost" {
			stored = append(stored, s.content)
		}
	}
	if len(stored) != len(sent) {
		t.Fatalf("%d messages stored in Alice's INBOX, want %d", len(stored), len(sent))
	}
	for i := range sent {
		checkDelivered(t, fmt.Sprintf("stored message %d", i+1), stored[i], sent[i])
	}

	for mode, md := range maildirs {
		for _, box := range []string{"Archive", "Drafts", "Junk", "Sent", "Trash"} {
			if _, err := os.Stat(filepath.Join(md, box)); err != nil {
				t.Errorf("mbsync (%s) did not create the Maildir %s: %v", mode, box, err)
			}
		}
		var files []string
		for _, sub := range []string{"cur", "new"} {
			ents, err := os.ReadDir(filepath.Join(md, "INBOX", sub))
			if err != nil {
				t.Fatalf("mbsync (%s): %v", mode, err)
			}
			for _, e := range ents {
				files = append(files, filepath.Join(md, "INBOX", sub, e.Name()))
			}
		}
		if len(files) != len(stored) {
			t.Errorf("mbsync (%s): %d messages in the Maildir INBOX, want %d", mode, len(files), len(stored))
		}
		matched := make([]int, len(stored))
		withTUID := 0
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			content := string(b)
			head := content[:strings.Index(content, "\n\n")+1]
			switch tuids := xTUID.FindAllString(head, -1); len(tuids) {
			case 0:
			case 1:
				content = strings.Replace(content, tuids[0], "", 1)
				withTUID++
			default:
				t.Errorf("mbsync (%s): %s has %d X-TUID fields", mode, filepath.Base(f), len(tuids))
			}
			i := slices.IndexFunc(stored, func(s string) bool { return strings.ReplaceAll(s, "\r\n", "\n") == content })
			if i < 0 || strings.Contains(content, "\r") {
				t.Errorf("mbsync (%s): %s, less X-TUID and with CRLF for LF, is no stored message:\n%.600q", mode, filepath.Base(f), content)
				continue
			}
			matched[i]++
		}
		t.Logf("mbsync (%s): %d messages in the Maildir INBOX, %d with an X-TUID field", mode, len(files), withTUID)
		for i, n := range matched {
			if n != 1 {
				t.Errorf("mbsync (%s): stored message %d is in the Maildir INBOX %d times, want once", mode, i+1, n)
			}
		}
	}
}

// TestIMAPIdleDelivery: an imapclient session idling on INBOX hears of each
// message delivered over SMTP (EXISTS, RFC 2177), in order, one by one; the time
// from the 250 that accepted it to the EXISTS is logged.
func TestIMAPIdleDelivery(t *testing.T) {
	t.Parallel()
	srv, imapAddr := startIMAPServer(t)
	type exists struct {
		n  uint32
		at time.Time
	}
	existsC := make(chan exists, 64)
	c, err := imapclient.DialInsecure(imapAddr, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					select {
					case existsC <- exists{*d.NumMessages, time.Now()}:
					default:
					}
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice@localhost", testPassword).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT INBOX: %v", err)
	}
	if sel.NumMessages != 0 {
		t.Fatalf("SELECT INBOX: %d EXISTS, want an empty INBOX", sel.NumMessages)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	sent := make([]string, 3)
	for i := range sent {
		sent[i] = crlf(fmt.Sprintf("From: Bob <bob@localhost>\nTo: Alice <alice@localhost>\nSubject: idle %d\n\nmessage %d\n", i+1, i+1))
		acked := sendSMTP(t, srv, "bob@localhost", []string{"alice@localhost"}, sent[i], false)
		want := uint32(i + 1)
		// The latency is logged (the benchmark measures it); the
		// deadline only catches a push that never comes.
		deadline := time.After(time.Until(acked.Add(10 * time.Second)))
	wait:
		for {
			select {
			case e := <-existsC:
				if e.n < want {
					continue
				}
				if e.n > want {
					t.Fatalf("EXISTS %d after message %d", e.n, want)
				}
				t.Logf("message %d: EXISTS %v after the 250", want, e.at.Sub(acked).Round(time.Microsecond))
				break wait
			case <-deadline:
				t.Fatalf("message %d: no EXISTS %d in IDLE within 10 s of the SMTP 250", want, want)
			}
		}
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE done: %v", err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1, 2, 3), &imap.FetchOptions{
		UID:         true,
		BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil {
		t.Fatalf("FETCH after IDLE: %v", err)
	}
	if len(msgs) != len(sent) {
		t.Fatalf("FETCH 1:3 after IDLE: %d messages, want %d", len(msgs), len(sent))
	}
	for i, m := range msgs {
		if m.UID != imap.UID(i+1) {
			t.Errorf("message %d has UID %d, want %d", i+1, m.UID, i+1)
		}
		for _, b := range m.BodySection {
			checkDelivered(t, fmt.Sprintf("message %d", i+1), string(b.Bytes), sent[i])
		}
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
}
